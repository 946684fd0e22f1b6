"""Training loops and their pieces, owned by the library (the CLI commands only parse arguments).

* :func:`zoopt.train` (``zoopt/train.py``): the epoch loop, checkpoints and resume for every optimizer;
* :mod:`.methods`: an optimizer per method name for the zoo networks (:func:`make_optimizer`);
* :mod:`.strategy_module`: any ask/tell strategy as a module optimizer (the facades' contract);
* :mod:`.zoo`: :func:`train_zoo`, a whole zoo training run; :mod:`zoopt.rl`: policy search;
* :mod:`.runs`, :mod:`.scores`, :mod:`.figures`, :mod:`.interrupt`: run folders, accuracy, the figure, Ctrl-C.
"""
from .interrupt import TrainingInterrupted
from .methods import METHODS, make_optimizer, register_method
from .runs import prepare_run_dir
from .scores import accuracy, split_scorer, summarize
from .strategy_module import StrategyModule
from .twin import TwinAdam
from .zoo import default_run_dir, train_zoo

__all__ = ["METHODS", "make_optimizer", "register_method", "StrategyModule", "TwinAdam", "train_zoo",
           "default_run_dir", "prepare_run_dir", "accuracy", "split_scorer", "summarize", "TrainingInterrupted"]
