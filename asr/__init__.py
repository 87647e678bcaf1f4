"""Archive ASR: a library's sound archive to speech corpora, fine-tuned models and transcripts."""

__version__ = "0.1.0"
