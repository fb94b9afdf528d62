"""Independent ground truth: per-response float64 autograd and explicit D×D solves.

Nothing here uses the engine's capture, curvature or statistics code. Each response runs alone (batch of
one, no padding); δ_t comes from torch.autograd.grad of L_r with respect to each module's output; the
projected gradients, token rows and curvatures are built as explicit D-vectors and D×D matrices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from influence_job.maths.projection import projected_dims, projection_matrices

KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class Reference:
    G: dict  # module name -> (N, D) projected response gradients
    tokens: dict  # module name -> list over responses of (T_r, D) token rows over the captured positions
    response_token_rows: dict  # module name -> list over responses of (len(response), D) rows g_t
    full_grad: dict  # module name -> (N, d_out*d_in) exact unprojected gradients
    weight_grad: dict  # module name -> (N, d_out*d_in) autograd weight gradients (all positions)
    prompt_index: np.ndarray
    accepted: np.ndarray
    advantage: np.ndarray
    entropy: list
    log_prob: np.ndarray


def read_groups(path):
    return [json.loads(line) for line in open(path) if line.strip()]


def build_reference(model_dir, data_path, proj_cfg, positions="all", objective="log_prob", threshold=0.0):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64, attn_implementation="eager")
    model.eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    mods = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and any(k in n for k in KINDS)]
    proj = {}
    for n, m in mods:
        dims = projected_dims(m.in_features, m.out_features, proj_cfg)
        mats = projection_matrices(n, dims, proj_cfg)
        proj[n] = mats if mats is not None else (torch.eye(m.in_features, dtype=torch.float64),
                                                  torch.eye(m.out_features, dtype=torch.float64))
    G = {n: [] for n, _ in mods}
    tokens = {n: [] for n, _ in mods}
    resp_rows = {n: [] for n, _ in mods}
    full = {n: [] for n, _ in mods}
    wgrad = {n: [] for n, _ in mods}
    prompt_index, accepted, advantages, entropy, log_probs = [], [], [], [], []
    groups = read_groups(data_path)
    for p, grp in enumerate(groups):
        group_rewards = np.array([r["reward"] for r in grp["responses"]], dtype=float)
        adv = (group_rewards - group_rewards.mean()) / (group_rewards.std(ddof=1) + 1e-6)
        prompt_ids = tok(grp["prompt"], add_special_tokens=False)["input_ids"]
        for j, resp in enumerate(grp["responses"]):
            resp_ids = tok(resp["response"], add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + resp_ids])
            Lp, S = len(prompt_ids), ids.shape[1]
            store = {}
            handles = [m.register_forward_hook(_keep(store, n)) for n, m in mods]
            logits = model(input_ids=ids).logits[0]
            for h in handles:
                h.remove()
            logp = torch.log_softmax(logits, -1)
            targets = torch.arange(Lp - 1, S - 1)
            L = logp[targets, ids[0, targets + 1]].sum()
            weight = adv[j] if objective == "advantage_log_prob" else 1.0
            outs = [store[n][1] for n, _ in mods]
            deltas = torch.autograd.grad(L * weight, outs, retain_graph=True)
            wg = torch.autograd.grad(L * weight, [m.weight for _, m in mods])
            keep = torch.arange(S) if positions == "all" else targets
            for (n, _m), delta, w in zip(mods, deltas, wg, strict=True):
                x = store[n][0][0]
                d = delta[0]
                P_in, P_out = proj[n]
                rows = torch.stack([(P_out @ torch.outer(d[t], x[t]) @ P_in.T).reshape(-1) for t in range(S)])
                tokens[n].append(rows[keep])
                resp_rows[n].append(rows[targets])
                grad_w = sum(torch.outer(d[t], x[t]) for t in keep.tolist())
                G[n].append((P_out @ grad_w @ P_in.T).reshape(-1))
                full[n].append(grad_w.reshape(-1))
                wgrad[n].append(w.reshape(-1))
            with torch.no_grad():
                ent = -(logp.exp() * logp).sum(-1)[targets]
            entropy.append(ent.numpy())
            log_probs.append(float(L.detach()))
            prompt_index.append(p)
            accepted.append(resp.get("accepted", resp["reward"] > threshold))
            advantages.append(adv[j])
    return Reference(
        G={n: torch.stack(v).detach() for n, v in G.items()},
        tokens={n: [t.detach() for t in v] for n, v in tokens.items()},
        response_token_rows={n: [t.detach() for t in v] for n, v in resp_rows.items()},
        full_grad={n: torch.stack(v).detach() for n, v in full.items()},
        weight_grad={n: torch.stack(v).detach() for n, v in wgrad.items()},
        prompt_index=np.array(prompt_index),
        accepted=np.array(accepted),
        advantage=np.array(advantages),
        entropy=entropy,
        log_prob=np.array(log_probs),
    )


def _keep(store, name):
    def hook(_m, inputs, output):
        store[name] = (inputs[0], output)

    return hook


def curvature(ref: Reference, name: str, members: list[int], source: str, damping="auto") -> torch.Tensor:
    """Explicit D×D damped curvature from the given responses."""
    if source == "token":
        R = torch.cat([ref.tokens[name][i] for i in members])
    else:
        R = ref.G[name][members]
    H = R.T @ R
    lam = 0.1 * torch.trace(H) / H.shape[0] if damping == "auto" else damping
    return H + lam * torch.eye(H.shape[0], dtype=H.dtype)


def hinv_reference(ref: Reference, source: str, scope: str, damping="auto") -> torch.Tensor:
    N = len(ref.prompt_index)
    total = torch.zeros(N, N, dtype=torch.float64)
    for name, G in ref.G.items():
        if scope == "global":
            H = curvature(ref, name, list(range(N)), source, damping)
            total += G @ torch.linalg.solve(H, G.T)
        else:
            for p in np.unique(ref.prompt_index):
                members = np.flatnonzero(ref.prompt_index == p).tolist()
                M = G @ torch.linalg.solve(curvature(ref, name, members, source, damping), G.T)
                total[members] += M[members] / 2
                total[:, members] += M[:, members] / 2
    return total


def raw_reference(ref: Reference) -> torch.Tensor:
    return sum(G @ G.T for G in ref.G.values())


def influence_reference(ref: Reference, source: str, aggregate="sum", exclude_self=False) -> list:
    """Per response, the token scores of docs/method.md written as loops over responses r and tokens t.

    sum:       Σ_{r∈acc(p)} g_rᵀ H_p⁻¹ g_t − Σ_{r∈rej(p)} g_rᵀ H_p⁻¹ g_t
    mean:      each side divided by its count (of the responses left on it)
    advantage: Σ_{r∈p} A_r g_rᵀ H_p⁻¹ g_t with the signed group advantages, every response of the prompt
    exclude_self drops r = the token's own response from every sum. Prompts whose responses are all
    accepted or all rejected are skipped (NaN), whatever the aggregate.
    """
    N = len(ref.prompt_index)
    scores = [np.zeros(len(e)) for e in ref.entropy]
    for p in np.unique(ref.prompt_index):
        members = np.flatnonzero(ref.prompt_index == p).tolist()
        if all(ref.accepted[i] for i in members) or not any(ref.accepted[i] for i in members):
            for i in members:
                scores[i][:] = np.nan
            continue
        for name, G in ref.G.items():
            Hinv = torch.linalg.inv(curvature(ref, name, members, source))
            for i in members:
                others = [r for r in members if not (exclude_self and r == i)]
                acc = [r for r in others if ref.accepted[r]]
                rej = [r for r in others if not ref.accepted[r]]
                for t, g_t in enumerate(ref.response_token_rows[name][i]):
                    dot = {r: float(G[r] @ Hinv @ g_t) for r in others}
                    if aggregate == "advantage":
                        scores[i][t] += sum(ref.advantage[r] * dot[r] for r in others)
                    elif aggregate == "sum":
                        scores[i][t] += sum(dot[r] for r in acc) - sum(dot[r] for r in rej)
                    else:  # mean
                        scores[i][t] += (sum(dot[r] for r in acc) / len(acc) if acc else 0.0) - (
                            sum(dot[r] for r in rej) / len(rej) if rej else 0.0)
    assert len(scores) == N
    return scores


def pair_loop_stats(M: np.ndarray, prompt_index, accepted) -> dict:
    """The statistics by a plain double loop over pairs (for comparing with similarity.matrix_stats)."""
    cells: dict = {}
    N = len(M)
    for i in range(N):
        for j in range(i + 1, N):
            if accepted[i] and accepted[j]:
                cat = "acc-acc"
            elif not accepted[i] and not accepted[j]:
                cat = "rej-rej"
            else:
                cat = "acc-rej"
            cos = M[i, j] / np.sqrt(M[i, i] * M[j, j])
            scope = "per_prompt" if prompt_index[i] == prompt_index[j] else "cross_prompt"
            for s in (scope, "all_prompt"):
                cells.setdefault((s, cat), []).append((M[i, j], cos))
    return cells
