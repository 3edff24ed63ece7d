"""The ``ifadit`` command. Thin: every subcommand parses its options and calls library code.

``fit``, ``validate``, ``test`` and ``predict`` go to the LightningCLI in :mod:`ifadit.lightning_cli`
(``ifadit fit --help``); the other subcommands are parsed here.

Expected failures (bad key file, unknown plugin, missing weights, bad config) end in one line on stderr
and exit status 2; they never print key material.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ifadit import registry
from ifadit.keys import KeyFileError, SecretKey, load_passphrase_file
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
    if args.passphrase_file:
        salt = bytes.fromhex(args.salt) if args.salt else None
        secret = SecretKey.from_passphrase(load_passphrase_file(args.passphrase_file), salt=salt)
    else:
        secret = SecretKey.generate()
    path = secret.save(args.path)
    print(f"wrote {path} (mode 0600), fingerprint {secret.fingerprint}")
    return 0


def _read_secret(args: argparse.Namespace) -> SecretKey:
    if args.key:
        return SecretKey.load(args.key)
    if args.passphrase_file:
        if not args.salt:
            raise ValueError("--passphrase-file needs --salt (hex) so the same key can be derived again")
        return SecretKey.from_passphrase(
            load_passphrase_file(args.passphrase_file), salt=bytes.fromhex(args.salt)
        )
    raise ValueError("give --key KEYFILE or --passphrase-file FILE --salt HEX")


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

    secret = _read_secret(args)
    task, datamodule = _build_task(args.config, args.ckpt, strict=True)
    judge_task, _ = _build_task(args.judge_config, args.judge_ckpt, strict=False)
    if task.model is None or not task.model.keyed:
        raise ValueError(f"{args.ckpt} is not a flow-phase model: score needs a trained flow")
    datamodule.setup("test")
    loader = {"test": datamodule.test_dataloader, "val": datamodule.val_dataloader}[args.split]()
    out = Path(args.out)
    scores = evaluate_headline(
        task.model, judge_task.identity_encoder, loader, secret, grid_path=out / "grid.png"
    )
    write_scores(scores, out / "scores.json")
    print(f"ifadit score: {args.split} split, judged by the recognizer in {args.judge_ckpt}")
    print(format_scores(scores))
    print(f"grid (original | anonymized key A | key B | recovered | wrong-key recovery): {out / 'grid.png'}")
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from ifadit.weights_report import format_weights_report, weights_report

    print(format_weights_report(weights_report(verify=not args.no_verify)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ifadit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plugins", help="list the registered components of every plugin group")
    p.add_argument("--group", choices=registry.GROUPS)
    p.add_argument("--strict", action="store_true", help="exit 1 if a plugin fails to load")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("keygen", help="write a new 256-bit secret key file (mode 0600, never overwrites)")
    p.add_argument("path")
    p.add_argument("--passphrase-file", help="derive the key from the passphrase in this file (scrypt)")
    p.add_argument("--salt", help="hex salt for --passphrase-file (default: random, recorded in the file)")
    p.set_defaults(func=_cmd_keygen)

    p = sub.add_parser("demo", help="the flow demo: anonymize and recover identity vectors with a key")
    p.add_argument("--config", default="recipes/quickstart/flow_demo.yaml")
    p.add_argument("--key", help="key file written by 'ifadit keygen'")
    p.add_argument("--passphrase-file")
    p.add_argument("--salt")
    p.add_argument("--steps", type=int, help="override the number of training steps")
    p.add_argument("--out", help="folder for flow_demo.json")
    p.set_defaults(func=_cmd_demo)

    for name in LIGHTNING_SUBCOMMANDS:  # listed for --help only: main() hands them to the LightningCLI
        sub.add_parser(name, help=f"LightningCLI {name} (see 'ifadit {name} --help')", add_help=False)

    p = sub.add_parser(
        "score", help="anonymize and recover held-out faces with a key, judged by another recognizer"
    )
    p.add_argument("--config", required=True, help="the flow-phase recipe the checkpoint was trained with")
    p.add_argument("--ckpt", required=True, help="the flow-phase checkpoint")
    p.add_argument("--judge-config", required=True, help="the recipe of an independently trained recognizer")
    p.add_argument("--judge-ckpt", required=True)
    p.add_argument("--key", help="key file written by 'ifadit keygen'")
    p.add_argument("--passphrase-file")
    p.add_argument("--salt")
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument("--out", default="outputs/score")
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("weights", help="list the pretrained checkpoints ifadit knows and which are present")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 verification")
    p.set_defaults(func=_cmd_weights)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        from ifadit.lightning_cli import cli_main

        cli_main(argv)
        return 0
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EXPECTED_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"ifadit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
