"""`asr bench`: WER benchmarks of models on test sets, history, reports, a regression gate."""
