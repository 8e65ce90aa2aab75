"""Task data built for real third-party models (rendered text, real files): the generators the
distillation evidence (benchmarks/distill_corpus.py) scores the models on."""
