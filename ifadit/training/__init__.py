"""Each phase's step and its losses as plain functions and classes; :class:`ifadit.task.IFADITTask`
dispatches to them. Nothing here imports Lightning."""

from ifadit.training.adversarial import Adversary
from ifadit.training.checkpoint import load_components
from ifadit.training.compensator import ReplayBuffer
from ifadit.training.components import build_model
from ifadit.training.disentangle import reconstruction_terms
from ifadit.training.flow import flow_terms, training_identities, training_keys
from ifadit.training.losses import (
    Encoded,
    LossWeights,
    OptimizerConfig,
    anonymity_loss,
    batch_diversity_loss,
    identity_loss,
)
from ifadit.training.recognizer import recognizer_loss, verification_metrics
from ifadit.training.render import latent_targets, render_terms, swapped_parameters
from ifadit.training.samples import VALIDATION_KEYS, sample_columns
from ifadit.training.validation import encoding_each_image_once, keyed_summary

__all__ = [
    "VALIDATION_KEYS",
    "Adversary",
    "Encoded",
    "LossWeights",
    "OptimizerConfig",
    "ReplayBuffer",
    "anonymity_loss",
    "batch_diversity_loss",
    "build_model",
    "encoding_each_image_once",
    "flow_terms",
    "identity_loss",
    "keyed_summary",
    "latent_targets",
    "load_components",
    "recognizer_loss",
    "reconstruction_terms",
    "render_terms",
    "sample_columns",
    "swapped_parameters",
    "training_identities",
    "training_keys",
    "verification_metrics",
]
