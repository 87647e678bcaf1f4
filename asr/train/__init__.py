"""`asr train`: recipes that fine-tune Whisper (seq2seq) and wav2vec2 (CTC) on webdataset shards."""
