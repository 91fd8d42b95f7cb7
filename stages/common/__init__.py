"""Code shared by the stage kinds (a package, so never a stage kind itself).

- ``sampling``: k completions per prompt (vLLM engine, vLLM server, HF generate).
- ``vllm_sync``: TRL's colocated vLLM engine on the CPU backend (weight sync, options).
- ``filters``: the rejection-sampling filters and their funnel.
- ``scoring``: reward scoring of completions, the answer a sample votes for, majority vote.
- ``stats``: pass@k, bootstrap intervals, the sign test.
- ``contamination``: eval questions checked against a run's training prompts.
- ``eval_results``: eval outputs read back, paired comparisons, their report section.

Modules here import heavy libraries (torch, vllm) inside functions, like the stages.
"""
