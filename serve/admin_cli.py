"""`aligngate canary ...` and `aligngate versions ...`: the admin API over HTTP, with a readable status table.

The gateway is `--url` (or `ALIGNGATE_URL`, default http://127.0.0.1:8000); the key is `--admin-key` (or
`ALIGNGATE_ADMIN_KEY`, else the local key file the gateway generated in its cache directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _key(args) -> str | None:
    if args.admin_key:
        return args.admin_key
    if os.environ.get("ALIGNGATE_ADMIN_KEY"):
        return os.environ["ALIGNGATE_ADMIN_KEY"]
    from serve.api.admin import local_key_path
    from serve.config import Settings

    path = local_key_path(Settings())
    return path.read_text().strip() if path.is_file() else None


def _call(args, method: str, path: str, body: dict | None = None, params: dict | None = None) -> dict:
    import httpx

    headers = {}
    key = _key(args)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        r = httpx.request(method, args.url.rstrip("/") + path, json=body if method == "POST" else None,
                          params=params, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as e:
        raise SystemExit(f"error: cannot reach the gateway at {args.url}: {e}")
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            msg = r.text[:300]
        raise SystemExit(f"error ({r.status_code}): {msg}")
    return r.json()


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def format_status(st: dict) -> str:
    lines = []
    ro = st.get("rollout")
    lines.append(f"store: {st.get('store')} (rev {st.get('rev')})" +
                 (f"  STORE ERROR: {st['store_error']}" if st.get("store_error") else ""))
    if ro:
        plan = " -> ".join(f"{s['weight']:.0%}" for s in ro["plan"])
        line = f"rollout: {ro['canary']} vs {ro['stable']}  state={ro['state']}  stage {ro['stage'] + 1}/{len(ro['plan'])}"
        if ro["state"] in ("running", "paused"):
            line += f" ({ro['stage_weight']:.0%}, {ro['stage_elapsed_s']:.0f}s in)"
        lines.append(line + f"  plan {plan}")
        if ro.get("reason"):
            lines.append(f"reason: {ro['reason']}")
        d = st.get("last_decision")
        if d and ro["state"] in ("running", "paused"):
            p = d["checks"].get("progress", {})
            lines.append(f"gate: {d['action']}  canary requests {p.get('canary_requests')}/{p.get('min_requests')}, "
                         f"{p.get('elapsed_s')}s/{p.get('min_duration_s')}s" +
                         (f"  -- {'; '.join(d['reasons'])}" if d["reasons"] else ""))
    else:
        lines.append("rollout: none")
    head = ["VERSION", "ROLE", "WEIGHT", "READY", "GATE", "REQS", "ERR%", "P99 TTFT ms", "P99 E2E ms", "REWARD",
            "ALARMS"]
    rows = [head]
    for v in st.get("versions", []):
        w = v["window"]
        reward = "-" if w.get("reward_mean") is None else f"{w['reward_mean']:.3f} (n={w['reward_n']})"
        alarms = ",".join(a["name"] for a in v.get("alarms", [])) or "-"
        if v.get("fault"):
            alarms += f" [fault {v['fault']}]"
        rows.append([v["name"], v.get("role") or "-", f"{v['weight']:.1%}", "yes" if v["ready"] else "no",
                     (v.get("gate") or "-") + ("(forced)" if v.get("forced") else ""), str(w["requests"]),
                     f"{w['error_rate'] * 100:.1f}", _ms(w["p99_ttft_s"]), _ms(w["p99_e2e_s"]), reward, alarms])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        lines.append("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
    return "\n".join(lines)


def _print(args, result: dict) -> int:
    if args.json:
        print(json.dumps(result, indent=2))
    elif "versions" in result and "rev" in result:
        print(format_status(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


def _canary(args) -> int:
    a = args.action
    if a == "status":
        return _print(args, _call(args, "GET", "/admin/status"))
    if a == "start":
        body = {"version": args.version, "reason": args.reason}
        if args.stages:
            body["stages"] = [float(x) for x in args.stages.split(",")]
        if args.min_requests is not None:
            body["min_requests"] = args.min_requests
        if args.min_duration is not None:
            body["min_duration_s"] = args.min_duration
        return _print(args, _call(args, "POST", "/admin/canary/start", body))
    if a == "promote":
        return _print(args, _call(args, "POST", "/admin/canary/promote", {"full": args.full, "reason": args.reason}))
    if a == "set-weight":
        return _print(args, _call(args, "POST", "/admin/canary/set-weight",
                                  {"version": args.version, "weight": args.weight, "reason": args.reason}))
    return _print(args, _call(args, "POST", f"/admin/canary/{a}", {"reason": args.reason}))


def _import(args) -> int:
    """Offline (no gateway): a TRL / OpenRLHF checkpoint -> a version directory (training.import_checkpoint)."""
    from training.import_checkpoint import ImportRefused, import_checkpoint

    try:
        res = import_checkpoint(args.src, args.out, policy=args.policy, name=args.name, force=args.force)
    except (ImportRefused, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"out": str(res.out), "layout": res.layout, "value_head": res.value_head,
                          "audit_model": str(res.audit_model) if res.audit_model else None, "notes": res.notes}))
        return 0
    print(f"imported {args.src} (layout {res.layout}) -> {res.out}")
    print(f"value head: {'yes (in-pass)' if res.value_head else 'no'}"
          + (f"; audit model: {res.audit_model}" if res.audit_model else ""))
    for n in res.notes:
        print(f"note: {n}")
    print(f"register it: aligngate versions register NAME --model {res.out}")
    return 0


def _versions(args) -> int:
    a = args.action
    if a == "import":
        return _import(args)
    if a == "list":
        res = _call(args, "GET", "/admin/versions")
        if args.json:
            return _print(args, res)
        rows = [["VERSION", "STATUS", "WEIGHT", "READY", "GATE", "SOURCE"]]
        for v in res["versions"]:
            gate = (v.get("gate") or {}).get("verdict") or "-"
            rows.append([v["name"] + (" (stable)" if v["name"] == res["stable"] else ""), v["status"],
                         f"{v['weight']:.1%}", "yes" if v["ready"] else "no",
                         gate + ("(forced)" if v.get("forced") else ""), v["source"] or "-"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        print("\n".join("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows))
        return 0
    if a == "register":
        if bool(args.model) == bool(args.remote_url):
            raise SystemExit("error: give exactly one of --model DIR or --remote-url URL")
        body = {"name": args.name, "model": args.model, "url": args.remote_url, "force": args.force,
                "reason": args.reason}
        return _print(args, _call(args, "POST", "/admin/versions", body))
    return _print(args, _call(args, "DELETE", f"/admin/versions/{args.name}", params={"reason": args.reason}))


def add_subcommands(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("ALIGNGATE_URL", "http://127.0.0.1:8000"),
                        help="gateway base URL (env ALIGNGATE_URL)")
    common.add_argument("--admin-key", help="admin key (env ALIGNGATE_ADMIN_KEY; default: the local key file)")
    common.add_argument("--reason", help="why (recorded in the audit log)")
    common.add_argument("--json", action="store_true", help="print the raw JSON answer")
    common.add_argument("--timeout", type=float, default=30.0)

    c = sub.add_parser("canary", help="canary rollouts: status, start, promote, rollback, pause, resume, set-weight")
    cs = c.add_subparsers(dest="action", required=True)
    cs.add_parser("status", parents=[common], help="per-version table: weight, stage, requests, p99s, errors, reward, alarms")
    st = cs.add_parser("start", parents=[common], help="start a rollout of a registered version")
    st.add_argument("version")
    st.add_argument("--stages", help="comma-separated canary shares (default 0.01,0.1,0.5,1)")
    st.add_argument("--min-requests", type=int, help="canary requests per stage")
    st.add_argument("--min-duration", type=float, help="seconds per stage")
    p = cs.add_parser("promote", parents=[common], help="advance to the next stage now")
    p.add_argument("--full", action="store_true", help="straight to 100%% and finish")
    for name, text in (("rollback", "roll the canary back (weight 0)"), ("pause", "hold the current stage"),
                       ("resume", "let the rollout advance again")):
        cs.add_parser(name, parents=[common], help=text)
    sw = cs.add_parser("set-weight", parents=[common], help="set a version's weight (pauses its rollout)")
    sw.add_argument("version")
    sw.add_argument("weight", type=float)
    c.set_defaults(func=_canary)

    v = sub.add_parser("versions", help="policy versions: list, register, import, unload")
    vs = v.add_subparsers(dest="action", required=True)
    vs.add_parser("list", parents=[common], help="registered versions")
    r = vs.add_parser("register", parents=[common], help="register an exported model directory or a remote URL")
    r.add_argument("name")
    r.add_argument("--model", help="exported model directory (with manifest.json), or a TRL value-head checkpoint "
                                    "(imported into the gateway's cache directory first)")
    r.add_argument("--remote-url", help="remote vLLM OpenAI server")
    r.add_argument("--force", action="store_true", help="override a FAIL gate verdict (audited)")
    im = vs.add_parser("import", help="turn a TRL value-head checkpoint or an OpenRLHF critic into a version "
                                      "directory (offline, no gateway)",
                       description="Import a checkpoint into aligngate's version layout (HF files, "
                                   "value_head/value_head.safetensors, manifest.json with gate verdict IMPORTED). "
                                   "Layouts: TRL AutoModelForCausalLMWithValueHead (v_head.summary.* in the weights; "
                                   "safetensors, sharded or .bin), served in the same forward pass; a causal LM with an "
                                   "OpenRLHF-style value_head.weight in its own weights, likewise; an OpenRLHF critic "
                                   "(value_head.weight or score.weight over its own trunk; needs --policy): served in "
                                   "the pass when its trunk is the policy's, else the version has no value head and "
                                   "the critic is written as an audit reward model (DIR/audit_model); a causal LM "
                                   "without a value head. Written atomically.")
    im.add_argument("src", help="checkpoint directory")
    im.add_argument("--out", required=True, help="version directory to write")
    im.add_argument("--policy", help="the actor an OpenRLHF critic belongs to (HF causal LM directory)")
    im.add_argument("--name", help="version name in the manifest (default: the --out directory's name)")
    im.add_argument("--force", action="store_true", help="replace an existing --out")
    im.add_argument("--json", action="store_true", help="print the result as JSON")
    u = vs.add_parser("unload", parents=[common], help="drain and unload a version")
    u.add_argument("name")
    v.set_defaults(func=_versions)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="aligngate")
    add_subcommands(p.add_subparsers(dest="command", required=True))
    a = p.parse_args()
    sys.exit(a.func(a))
