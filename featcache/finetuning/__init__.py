"""Train a network's top blocks from cached activations: ``featcache.finetune(CACHE, NODE)`` (stage:
orchestration).

The path of the data: the cache holds the spatial activations at NODE (``extract --layer NODE --pool
none``) → the network is rebuilt with the cache's model and weights (checked against the weights'
checksum) and split at NODE (:func:`featcache.models.split_top`): the *top* is every layer after NODE up to
the penultimate features → for each configuration of a small grid, a :class:`~featcache.learn.top.TopClassifier`
(the top with its pretrained weights + a new linear head) is trained with AdamW on minibatches read from the
cache, early-stopped on the val rows → the leaderboard ranks the configurations on val, the best is scored
once on test and saved as ``best.safetensors``, which ``featcache.predict`` applies to new images (it extracts
NODE and runs the trained top). The frozen bottom never runs here: it ran once, during extraction.
The command line is ``featcache.cli.finetune``; ``python -m featcache.finetune`` runs it.

The steps, one module each: ``_network`` (the network rebuilt and split at NODE; ``network`` for a saved model) →
``_train`` (the rows held out, each configuration trained; ``held_out_predictions`` for ``fit``) → ``_write`` (the
output folder); ``_finetune`` (``finetune``, ``run_finetune``) runs them, ``_result`` is :class:`FinetuneResult`.
"""
from ._finetune import finetune, run_finetune
from ._network import Network, network, split_for
from ._result import FinetuneResult
from ._train import held_out_predictions

__all__ = ["FinetuneResult", "Network", "finetune", "held_out_predictions", "network", "run_finetune", "split_for"]
