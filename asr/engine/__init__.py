"""`asr transcribe`: the job runner, the Transcriber and the CTranslate2 Whisper and CTC engines."""
