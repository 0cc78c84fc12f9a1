"""Evaluation of world models (DESIGN.md section 6).

* :mod:`~persistworld_env.evaluation.fidelity`: batched replay of held-out episodes, per-camera and
  per-step PSNR / SSIM / LPIPS, the ``metrics.json`` document and its validator;
* :mod:`~persistworld_env.evaluation.comparisons`: paired per-episode wins with sign-test p-values,
  Bradley-Terry / Elo ratings with bootstrap intervals;
* :mod:`~persistworld_env.evaluation.policy_agreement`: Pearson r and SIMPLER's MMRV between policy
  success in the simulator and in a model, with bootstrap intervals;
* :mod:`~persistworld_env.evaluation.policies`: the policy zoo (noisy scripted experts, image-based
  behaviour cloning, random) and the episode runner;
* :mod:`~persistworld_env.evaluation.plots`: the PNG figures;
* :mod:`~persistworld_env.evaluation.schema`: the field checker behind the documents' validators.

Submodules are imported on demand (the statistics need only numpy and scipy).
"""
