"""DeepSpeed ZeRO fine-tuning of the extractors (paper step 1), then export.

The paper fine-tunes Baichuan-13B (transcripts) and CLIP-ViT-large (frames) on
the labeled split before extracting features. Here a classification head on
the mean-pooled hidden states of one layer is trained together with the
backbone under DeepSpeed ZeRO (stage and offload come from the job's DeepSpeed
config), launched on Ray Train workers; the ZeRO shards are gathered into a
plain Hugging Face folder that ``from_pretrained`` loads without DeepSpeed, and
the role is re-extracted into a new feature table. By default the fine-tuning
is cross-fitted (``finetune.folds``): each labeled row's features come from a
fold model that never trained on it.

Modules: ``dsconfig`` (job -> DeepSpeed config), ``model`` (backbone + head,
export/load, no Ray), ``data`` (labeled rows), ``loop`` (the per-worker recipe),
``launch`` (Ray Train edge), ``crossfit`` (folds, one model per fold, per-row
record, extraction), ``stage`` (the ``finetune`` stage), ``plan`` (ZeRO memory
estimates).
"""
