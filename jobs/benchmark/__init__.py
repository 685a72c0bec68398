"""Benchmarks that print figures measured side by side in one run (`python -m jobs.benchmark`).

One module per comparison; they share one timer and one reference-style loop (timing.py,
reference_loop.py), so every "reference style" figure means the same thing.

    export:    synthesis + scoring of the built-in model, torch eager vs ONNX Runtime.
    sampling:  (a) the Ray Data pipeline, (b) one process of batched ONNX Runtime calls,
               (c) the reference-style loop; a/b and a/c.
    fit:       the method's fits as parallel Ray tasks vs sequentially (the reference
               set-up), and each alternative solver.
    test:      the generation test stage vs the reference-style loop with a JPEG round trip
               per image, in ONNX Runtime and in torch eager.
    grid:      one grid run vs the whole method once per cell.
    reference: the 256-px reference architecture: reference style, torch eager and ONNX
               Runtime with IO binding over a batch sweep (--gpu, --fp16 on GPU nodes).
    stylegan2: a StyleGAN2 generator (256 px, config-f widths, random weights): torch eager
               vs ONNX Runtime over a batch sweep, with multiply-adds per image.
    estimators: every direction estimator on the same samples and test cases, at several
               seeds: mean |corr|, passes, consistency, stability, truth cosines.
    ceiling:   the sampling pipeline with inference replaced by zeros (a null engine): the
               most images/s it can ever feed a GPU; ends with `ceiling: N images/s`.
    scale:     the sampling driver's peak memory and images/s at n = 100,000, 400,000 and
               2,000,000, one fresh driver each; ends with `scale: n=... driver peak X GB, N images/s`.
    gpu:       on a GPU, the 256-px reference: torch fp32/fp16 (the anchor), ONNX Runtime in
               one process over call sizes, the Ray pipeline, GPU use and memory, fp16 vs
               fp32; ends with one `gpu:` line of images/s and ratios.
    editor:    the deployable editor graph (stored groups, groups found, fp16) vs the test
               stage's own path through the bundle graphs, batch 1 and 64.
"""
