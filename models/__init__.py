"""Models split into pipeline stages, plus the training data they read. Imports nothing of ours.

    config = models.get_config("tiny")
    stages = models.split(config, models.even_layers(config.layers, 4), seed=0)
    data = models.SequenceDataset(models.read_corpus(models.default_corpus_path()), config.context)
"""
from .config import PRESETS, GPTConfig, count_parameters, get_config, layer_parameters
from .data import Batch, ByteTokenizer, SequenceDataset, default_corpus_path, read_corpus
from .gpt import Block, Stage, init_parameters
from .split import build_stage, check_layers, even_layers, param_checksum, split

__all__ = [
    "GPTConfig", "PRESETS", "get_config", "count_parameters", "layer_parameters",
    "Stage", "Block", "init_parameters",
    "split", "build_stage", "even_layers", "check_layers", "param_checksum",
    "ByteTokenizer", "Batch", "SequenceDataset", "default_corpus_path", "read_corpus",
]
