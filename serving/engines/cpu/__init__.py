"""In-process CPU engine: small Llama-style models over the BERT WordPiece vocabulary.

The package imports nothing itself: ``engine`` and ``model`` bring in torch, which a gateway that only
counts prompts (``tokenizer``) for remote workers never needs. Import ``serving.engines.cpu.engine``
for ``CpuEngine``.
"""
