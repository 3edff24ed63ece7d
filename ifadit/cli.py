"""The ``ifadit`` command. Thin: every subcommand parses its options and calls library code.

``fit``, ``validate``, ``test`` and ``predict`` go to the LightningCLI in :mod:`ifadit.lightning_cli`
(``ifadit fit --help``); the other subcommands are parsed here. Options are spelled like Lightning's, with
underscores (``--ckpt_path``, ``--passphrase_file``); the hyphenated spelling of any option works too.

Expected failures (bad key file, unknown plugin, missing weights, bad config) end in one line on stderr
and exit status 2; they never print key material.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ifadit import __version__, registry
from ifadit.cli_models import MODEL_HELP, add_model_parsers
from ifadit.cli_sweep import add_sweep_parser
from ifadit.keys import KeyFileError, SecretKey, load_passphrase_file
from ifadit.keys.passphrase import require_strong_passphrase
from ifadit.keys.secret import SCRYPT_DEFAULTS, SCRYPT_MIN_N
from ifadit.photos.commands import add_align_parser
from ifadit.weights import WeightsError, load_checkpoint, load_state_dict_by_name

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
EXPECTED_ERRORS = (KeyFileError, registry.RegistryError, WeightsError, ValueError, OSError)


def _cmd_plugins(args: argparse.Namespace) -> int:
    groups = [args.group] if args.group else list(registry.GROUPS)
    any_broken = False
    for group in groups:
        loaded, broken = registry.load_all(group)
        infos = registry.available(group)
        print(f"{group}:")
        if not infos:
            print("  (none)")
        for name in sorted(loaded):
            info = infos[name]
            print(f"  {name:<18} {info.value:<48} [{info.distribution}]")
        for item in broken:
            any_broken = True
            print(f"  {item.info.name:<18} BROKEN: {item.error} [{item.info.distribution}]")
    return 1 if any_broken and args.strict else 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    if (args.config is None) != (args.ckpt_path is None):
        raise ValueError("checking keys needs both --config and --ckpt_path")
    if Path(args.path).exists():  # before checking keys, which takes a while
        raise KeyFileError(f"refusing to overwrite existing file {args.path}")
    if args.passphrase_file:
        salt = bytes.fromhex(args.salt) if args.salt else None
        passphrase = load_passphrase_file(args.passphrase_file)
        if not args.allow_weak_passphrase:  # before checking keys, which takes a while
            require_strong_passphrase(passphrase)
        draw = lambda: SecretKey.from_passphrase(passphrase, salt=salt, allow_weak=True)  # noqa: E731
    else:
        draw = SecretKey.generate
    secret = _checked_key(args, draw) if args.ckpt_path else draw()
    path = secret.save(args.path)
    print(f"wrote {path} (mode 0600), fingerprint {secret.fingerprint}")
    return 0


def _checked_key(args: argparse.Namespace, draw: Callable[[], SecretKey]) -> SecretKey:
    """A key ``ifadit.keycheck`` accepts for the model, checked on the recipe's validation faces."""
    import torch

    from ifadit.keycheck import choose_key

    if args.candidates < 1 or args.max_draws < args.candidates or args.check_images < 1:
        raise ValueError("need 1 <= --candidates <= --max_draws and --check_images >= 1")
    if args.passphrase_file and args.salt and (args.candidates, args.max_draws) != (1, 1):
        raise ValueError("a passphrase with a fixed --salt gives one key: use --candidates 1 --max_draws 1")
    task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
    if task.model is None or not task.model.keyed:
        raise ValueError(f"{args.ckpt_path} is not a flow-phase model: checking a key needs a trained flow")
    datamodule.setup("validate")
    batches, count = [], 0
    for batch in datamodule.val_dataloader():  # only as many faces as the check uses
        batches.append(batch["image"])
        count += len(batch["image"])
        if count >= args.check_images:
            break
    images = torch.cat(batches)[: args.check_images]
    choice = choose_key(
        task.model.eval(), images, args.candidates, args.max_anonymized, draw, args.max_draws
    )
    weak = sum(c.recovered is None for c in choice.candidates)
    print(
        f"drew {len(choice.candidates)} keys, checked on {len(images)} validation faces with the model's own "
        f"identity encoder: {weak} weak (anonymized cosine > {args.max_anonymized}); kept the best "
        f"recovering of {args.candidates} that anonymize (anonymized {choice.check.anonymized:+.3f}, "
        f"recovered {choice.check.recovered:+.3f})"
    )
    return choice.secret


def _read_secret(args: argparse.Namespace) -> SecretKey:
    if args.key:
        return SecretKey.load(args.key)
    if args.passphrase_file:
        if not args.salt:
            raise ValueError("--passphrase_file needs --salt (hex) so the same key can be derived again")
        return SecretKey.from_passphrase(
            load_passphrase_file(args.passphrase_file),
            salt=bytes.fromhex(args.salt),
            n=args.scrypt_n,
            allow_weak=args.allow_weak_passphrase,
        )
    raise ValueError("give --key KEYFILE or --passphrase_file FILE --salt HEX")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ifadit.demo import format_result, load_config, run_flow_demo

    secret = _read_secret(args)
    config = load_config(args.config)
    if args.steps is not None:
        config.setdefault("train", {})["steps"] = args.steps
    result = run_flow_demo(config, secret, out_dir=args.out)
    print("ifadit flow demo: anonymize identity vectors with a secret key, recover them, try wrong keys")
    print(format_result(result))
    if args.out:
        print(f"results written to {args.out}/flow_demo.json")
    return 0


def _build_task(config: str, checkpoint: str, strict: bool) -> tuple[Any, Any]:
    """The task and datamodule a recipe describes, with a trained checkpoint's weights."""
    from ifadit.lightning_cli import cli_main

    cli = cli_main(["--config", config, "--model.init_from", "null", "--trainer.logger", "false"], run=False)
    task = cli.model
    if strict:
        state = load_checkpoint(checkpoint, weights_only=True)
        load_state_dict_by_name(task, state.get("state_dict", state), what=checkpoint)
    else:
        task.load_components(checkpoint)
    return task, cli.datamodule


def _cmd_score(args: argparse.Namespace) -> int:
    from ifadit.evaluation import evaluate_headline, format_scores, write_scores
    from ifadit.recognizers.spec import build_recognizer

    secret = _read_secret(args)
    task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
    judge = build_recognizer(args.judge)
    if task.model is None or not task.model.keyed:
        raise ValueError(f"{args.ckpt_path} is not a flow-phase model: score needs a trained flow")
    datamodule.setup("test")
    loader = {"test": datamodule.test_dataloader, "val": datamodule.val_dataloader}[args.split]()
    out = Path(args.out)
    scores = evaluate_headline(task.model, judge, loader, secret, grid_path=out / "grid.png")
    write_scores(scores, out / "scores.json")
    print(f"ifadit score: {args.split} split, judged by {args.judge}")
    print(format_scores(scores))
    print(f"grid (original | anonymized key A | key B | recovered | wrong-key recovery): {out / 'grid.png'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ifadit.evaluate import evaluate_checkpoint

    secret = _read_secret(args) if (args.key or args.passphrase_file) else None
    task, datamodule = _build_task(args.config, args.ckpt_path, strict=True)
    return evaluate_checkpoint(task, datamodule, secret, args)


def _cmd_weights(args: argparse.Namespace) -> int:
    from ifadit.weights_report import format_weights_report, preset_report, weights_report

    print(format_weights_report(weights_report(verify=not args.no_verify), preset_report()))
    return 0


def _cmd_photos(args: argparse.Namespace) -> int:
    """``ifadit anonymize`` / ``ifadit recover``: every face of every photo, one line per failed photo."""
    from ifadit.api import Anonymizer
    from ifadit.photos.batch import BatchOptions, check_targets, run_batch
    from ifadit.photos.detect import FaceDetector
    from ifadit.photos.io import PhotoError, collect_inputs

    secret = _read_secret(args)
    unsupported: list[Path] = []
    inputs = collect_inputs(args.inputs, unsupported)
    for path in unsupported:  # GIF, TIFF, HEIC, ... in a folder: said, not passed over in silence
        print(f"ifadit {args.command}: note: {path}: not read (JPEG, PNG or WebP only): convert it first",
              file=sys.stderr)
    if not inputs:
        raise ValueError("no JPEG, PNG or WebP file in the given inputs")
    options = BatchOptions(
        operation=args.command, out_dir=Path(args.out), file_format=args.format,
        overwrite=args.overwrite, sidecar=args.sidecar,
        metadata=Path(args.metadata) if getattr(args, "metadata", None) else None,
        detect=getattr(args, "detect", False), force=getattr(args, "force", False),
        progress=False if args.no_progress else None,
        keep_metadata=getattr(args, "keep_metadata", False),
    )
    try:  # before any model work: outputs that clash, an output folder that cannot be written
        check_targets(inputs, options)
    except PhotoError as exc:
        raise ValueError(str(exc)) from None
    if args.min_face_size < 1:
        raise ValueError("--min_face_size must be at least 1 (pixels of the photo)")
    detector = FaceDetector(
        min_face_size=args.min_face_size, max_side=args.detect_max_side, device=args.device
    )
    anonymizer = Anonymizer.from_model(
        args.model, config=args.config, device=args.device, detector=detector,
        batch_size=args.batch_size, blur_tiny=args.blur_tiny,
    )
    summary = run_batch(anonymizer, inputs, secret, options)
    done = "anonymized" if args.command == "anonymize" else "recovered"
    print(f"ifadit {args.command}: {done} {summary.faces} face(s) in {len(summary.written)} of "
          f"{len(inputs)} photo(s) into {args.out}; {len(summary.failed)} failed")
    return 0 if summary.ok else 1


# Old option names, still accepted (the help shows only the current ones): subcommand -> old -> current.
RENAMED_OPTIONS: dict[str, dict[str, str]] = {
    "keygen": {"--check_ckpt": "--ckpt_path", "--check_config": "--config"},
    "score": {"--ckpt": "--ckpt_path"},
    "evaluate": {"--ckpt": "--ckpt_path"},
    "anonymize": {"--ckpt_path": "--model", "--skip_tiny": "--blur_tiny"},
    "recover": {"--ckpt_path": "--model", "--skip_tiny": "--blur_tiny"},
}
_LONG_OPTION = re.compile(r"^--[A-Za-z][\w-]*$")


def _add_key_options(p: argparse.ArgumentParser, what: str = "the secret key") -> None:
    p.add_argument("--key", help=f"{what}: a key file written by 'ifadit keygen'")
    p.add_argument("--passphrase_file", help="instead of --key: a file holding the passphrase the key was "
                   "derived from (with --salt)")
    p.add_argument("--salt", help="the hex salt of --passphrase_file (printed in the key file's header)")
    p.add_argument("--scrypt_n", type=int, default=SCRYPT_DEFAULTS["n"],
                   help=f"the scrypt cost of --passphrase_file's key (default {SCRYPT_DEFAULTS['n']}; "
                   f"{SCRYPT_MIN_N} for keys made before the default was raised)")
    _add_weak_option(p)


def _add_weak_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow_weak_passphrase", action="store_true",
                   help="derive a key from a passphrase that fails the strength check (short or guessable)")


def _add_photo_parsers(sub: Any) -> None:
    for name, what in (("anonymize", "anonymize every face of photos with a key"),
                       ("recover", "recover the faces of anonymized photos with the same key")):
        p = sub.add_parser(name, help=what + " (exit 1 if any photo failed)", description=what + ".")
        p.add_argument("inputs", nargs="+", metavar="INPUT",
                       help="JPEG/PNG/WebP files or folders (recursive)")
        p.add_argument("--out", required=True, help="output folder (inputs are never overwritten)")
        p.add_argument("--model", required=True, metavar="NAME|PATH", help=MODEL_HELP)
        p.add_argument("--config", help="the recipe of a checkpoint that carries no model config")
        _add_key_options(p)
        p.add_argument("--device", default="cpu",
                       help="torch device for detection and the model (default cpu)")
        p.add_argument("--batch_size", type=int, help="faces per model call (default: 1 on CPU, 16 on GPU)")
        p.add_argument("--format", choices=("png", "jpeg", "webp"),
                       help="output format (default: the input's; png and webp are lossless)")
        p.add_argument("--overwrite", action="store_true",
                       help="replace existing outputs (never an input)")
        p.add_argument("--sidecar", action="store_true",
                       help="also write OUTPUT.ifadit.json with the metadata")
        p.add_argument("--min_face_size", type=int, default=24,
                       help="smallest face to anonymize: box side in pixels of the photo as it is "
                       "(default 24); smaller faces (searched down to 12 px) fail the photo")
        p.add_argument("--blur_tiny", action="store_true",
                       help="blur faces under --min_face_size instead of failing the photo")
        p.add_argument("--detect_max_side", type=int, default=1600,
                       help="largest image the face detector sees at once: larger photos are searched "
                       "in overlapping tiles at full resolution (default 1600)")
        if name == "anonymize":
            p.add_argument("--keep_metadata", action="store_true",
                           help="write back the input's exposure tags (exposure time, aperture, ISO, "
                           "focal length, flash, ...); camera, serial, GPS, dates are never written")
        p.add_argument("--no_progress", action="store_true", help="no progress bar")
        if name == "recover":
            p.add_argument("--metadata",
                           help="an ifadit metadata sidecar for the inputs (e.g. after re-encoding)")
            p.add_argument("--detect", action="store_true",
                           help="detect the faces of photos without metadata")
            p.add_argument("--force", action="store_true",
                           help="recover even when the model differs from the one in the metadata "
                           "(a wrong key is always refused)")
        p.set_defaults(func=_cmd_photos)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand but the Lightning ones (listed for the help only)."""
    parser = argparse.ArgumentParser(
        prog="ifadit",
        description="Key-controlled, invertible face anonymization (iFADIT): train models from YAML "
        "recipes, anonymize and recover photos with a secret key, score and sweep.",
        epilog="'ifadit COMMAND --help' lists a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"ifadit {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plugins", help="list the registered components of every plugin group")
    p.add_argument("--group", choices=registry.GROUPS, help="list only this group")
    p.add_argument("--strict", action="store_true", help="exit 1 if a plugin fails to load")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("keygen", help="write a new 256-bit secret key file (mode 0600, never overwrites)")
    p.add_argument("path", help="the key file to write (refused if it exists)")
    p.add_argument("--passphrase_file", help="derive the key from the passphrase in this file (scrypt)")
    p.add_argument("--salt", help="hex salt for --passphrase_file (default: random, recorded in the file)")
    _add_weak_option(p)
    p.add_argument("--config", help="with --ckpt_path: reject keys that are weak for this model "
                   "(ifadit.keycheck), checked on this recipe's validation faces")
    p.add_argument("--ckpt_path", help="the flow-phase checkpoint to check keys on (with --config)")
    p.add_argument("--candidates", type=int, default=4,
                   help="draw keys until this many anonymize; the best recovering one is written (default 4)")
    p.add_argument("--max_draws", type=int, default=32,
                   help="give up after drawing this many keys (default 32)")
    p.add_argument("--max_anonymized", type=float, default=0.1,
                   help="weak above this cosine between the original and anonymized faces (default 0.1)")
    p.add_argument("--check_images", type=int, default=200, help="validation faces to check on (default 200)")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("demo", help="the flow demo: anonymize and recover identity vectors with a key")
    p.add_argument("--config", default="recipes/quickstart/flow_demo.yaml",
                   help="the demo's own YAML (flow, key scheme, steps; default: the quickstart's)")
    _add_key_options(p)
    p.add_argument("--steps", type=int, help="override the number of training steps")
    p.add_argument("--out", help="folder for flow_demo.json")
    p.set_defaults(func=_cmd_demo)

    for name in LIGHTNING_SUBCOMMANDS:  # listed for --help only: main() hands them to the LightningCLI
        sub.add_parser(name, help=f"LightningCLI {name} (see 'ifadit {name} --help')", add_help=False)

    p = sub.add_parser(
        "score", help="anonymize and recover held-out faces with a key, judged by another recognizer"
    )
    p.add_argument("--config", required=True, help="the flow-phase recipe the checkpoint was trained with")
    p.add_argument("--ckpt_path", required=True, help="the flow-phase checkpoint")
    p.add_argument("--judge", default="synthfaces64-judge", metavar="NAME_OR_CKPT",
                   help="the recognizer that scores, trained apart from the model: a registered name "
                   "(default: the shipped SynthFaces judge) or CKPT:config=RECIPE of one ifadit trained")
    _add_key_options(p)
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="the faces to score (default test)")
    p.add_argument("--out", default="outputs/score",
                   help="folder for scores.json and grid.png (default outputs/score)")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser(
        "evaluate", help="the metrics suite on a trained model: table, JSON, Markdown and an MLflow run"
    )
    p.add_argument("--ckpt_path", required=True, help="the flow-phase checkpoint")
    p.add_argument("--config", required=True, help="the flow-phase recipe the checkpoint was trained with")
    p.add_argument("--data", choices=("test", "val"), default="test", help="the split to evaluate")
    p.add_argument("--recognizer", action="append", metavar="NAME_OR_CKPT",
                   help="a judge, repeatable: a registered name (dlib, arcface-irse50:checkpoint=PATH, ...) "
                   "or CKPT:config=RECIPE of a recognizer ifadit trained; default: the model's own encoder")
    _add_key_options(p, "the key (default: the public validation key)")
    p.add_argument("--anonymizations", type=int, default=2, metavar="K",
                   help="keys per face for the diversity metrics (default 2)")
    p.add_argument("--far", type=float, default=1e-3,
                   help="false acceptance rate for recognizers calibrated on the val split (default 1e-3)")
    p.add_argument("--limit", type=int, help="evaluate at most this many images")
    p.add_argument("--batch_size", type=int, help="override the recipe's batch size")
    p.add_argument("--no_detector", action="store_true", help="skip the MTCNN utility metrics")
    p.add_argument("--no_fid", dest="fid", action="store_false", help="skip FID")
    p.add_argument("--no_attacks", action="store_true",
                   help="skip the attacks of someone holding the model but not the key")
    p.add_argument("--attack_keys", type=int, default=100, metavar="N",
                   help="wrong keys the key search tries per face (default 100; 0: no key search)")
    p.add_argument("--attack_steps", type=int, default=1000,
                   help="training steps of the learned-inversion attacker (default 1000; 0: none)")
    p.add_argument("--attack_pairs", type=int, default=4800,
                   help="train-split faces anonymized under random keys to train it on (default 4800)")
    p.add_argument("--attack_batch", type=int, default=256, help="its batch size (default 256)")
    p.add_argument("--out", default="outputs/evaluate",
                   help="folder for evaluation.json, evaluation.md and grid.png (default outputs/evaluate)")
    p.add_argument("--no_mlflow", action="store_true", help="do not log an MLflow run")
    p.add_argument("--tracking_uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--experiment", help="MLflow experiment (default: ifadit)")
    p.add_argument("--run_name", help="MLflow run name (default: evaluate-<checkpoint folder>)")
    p.set_defaults(func=_cmd_evaluate)

    add_model_parsers(sub)

    p = sub.add_parser("weights", help="list the pretrained checkpoints ifadit knows, which are present and "
                       "which files each model preset still needs")
    p.add_argument("--no_verify", action="store_true", help="skip sha256 verification")
    p.set_defaults(func=_cmd_weights)

    _add_photo_parsers(sub)
    add_align_parser(sub)

    add_sweep_parser(sub)
    return parser


def normalize_options(argv: Sequence[str]) -> list[str]:
    """Arguments with every long option in the underscore spelling (``--passphrase-file`` ->
    ``--passphrase_file``) and renamed options under their current names (``--ckpt`` -> ``--ckpt_path``)."""
    out: list[str] = []
    renamed = RENAMED_OPTIONS.get(argv[0], {}) if argv else {}
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + list(argv[i:])
        flag, sep, value = arg.partition("=")
        if _LONG_OPTION.match(flag):
            flag = "--" + flag[2:].replace("-", "_")
            flag = renamed.get(flag, flag)
            arg = flag + sep + value
        out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``ifadit COMMAND ...``: the exit status (2 for an expected failure, reported in one line)."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        from ifadit.lightning_cli import cli_main

        cli_main(None if from_command_line else argv)  # None: the CLI reads sys.argv itself
        return 0
    args = build_parser().parse_args(normalize_options(argv))
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ifadit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
