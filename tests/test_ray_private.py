"""mer's only two uses of private Ray APIs, each isolated in one function: this fails loudly on a Ray upgrade."""

import logging


def test_ray_train_worker_logger_is_where_mer_quiets_it():
    from ray.train.v2._internal.execution import context

    from mer.train.loop import quiet_ray_train_worker

    quiet_ray_train_worker()
    assert logging.getLogger(context.__file__).level == logging.WARNING


def test_ray_token_loader_answers_without_a_token(tmp_path, monkeypatch):
    from mer.remote.client import read_token

    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    assert read_token() is None
    monkeypatch.setenv("RAY_AUTH_TOKEN", "abc123")
    assert read_token() == "abc123"
