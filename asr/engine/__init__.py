"""The transcription engine: CTranslate2 Whisper and wav2vec2 (CTC) models for `asr transcribe`."""
