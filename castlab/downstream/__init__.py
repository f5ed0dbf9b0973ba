"""After a sparse model exists: zero-shot evaluation, fine-tuning, quantization, export.

``zeroshot`` (the only lm-eval adapter) scores a model on ``benchdata``'s offline benchmark files;
``finetune`` trains with the N:M mask held fixed; ``quantize`` rounds weights to int8/int4 keeping
the zeros; ``export`` writes ``save_pretrained`` + the bit-packed mask and checks CUDA 2:4
kernels; ``commands`` wires `castlab eval-zeroshot`, `quantize`, `finetune` and `export`.
Perplexity evaluation, which training also uses, stays in ``castlab.evaluate``.
"""
