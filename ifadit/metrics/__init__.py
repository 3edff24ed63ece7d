"""The anonymization metrics suite: torchmetrics ``Metric`` s on embeddings, images, latents and detections
(usable on any anonymizer), :class:`AnonymizationSuite`, which drives an ifadit model and feeds them all, and
:class:`ModelAttacks`, what an attacker holding the model but not the key gets.
"""

from ifadit.metrics.attacks import KeySearch, Linkability, ModelAttacks, attack_pairs, train_inverter
from ifadit.metrics.detection import Detections, DetectionUtility, MTCNNDetector
from ifadit.metrics.identity import IdentityRetrieval, IdentitySimilarity, PairwiseIdentityDiversity
from ifadit.metrics.image import (
    LPIPSDistance,
    MeanDistance,
    PairwiseDistance,
    default_lpips,
    lpips_weights_present,
    pixel_l1,
    psnr_metric,
    ssim_metric,
)
from ifadit.metrics.latent import KeyIndistinguishability, LatentRoundTripError, flow_density, sphere_score
from ifadit.metrics.suite import AnonymizationSuite, RecognizerFeatures, public_key

__all__ = [
    "AnonymizationSuite",
    "DetectionUtility",
    "Detections",
    "IdentityRetrieval",
    "IdentitySimilarity",
    "KeyIndistinguishability",
    "KeySearch",
    "LPIPSDistance",
    "LatentRoundTripError",
    "Linkability",
    "MTCNNDetector",
    "MeanDistance",
    "ModelAttacks",
    "PairwiseDistance",
    "PairwiseIdentityDiversity",
    "RecognizerFeatures",
    "attack_pairs",
    "default_lpips",
    "flow_density",
    "lpips_weights_present",
    "pixel_l1",
    "psnr_metric",
    "public_key",
    "sphere_score",
    "ssim_metric",
    "train_inverter",
]
