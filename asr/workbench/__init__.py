"""The archivist's workbench (`asr serve`): search, listen to, correct and review transcripts."""
