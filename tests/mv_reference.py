"""An independent MV-Adapter reference for parity tests, assembled from MV-Adapter's formulas.

Plain torch forward hooks on the unpatched tiny UNet's attn1 modules, the adapter tensors read
straight from the file (mapped with the host's own ``unet_to_diffusers``), upstream's
repeat_interleave row attention / flip-and-stack row-column attention, the official reference
branch (states repeated per view, all-zero states for the uncond half), and optionally the
condition encoder's features (diffusers ``T2IAdapter``) added after the listed ComfyUI blocks.
Shared by the host tests of the patch and of the whole MV-Adapter chain.
"""

from __future__ import annotations

import math

import comfy.samplers
import comfy.utils
import torch
from safetensors.torch import load_file

from parallax import compat


def seeded(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def tiny_encoder(arch: str):
    """A tiny checkpoint's ModelPatcher and a text -> CONDITIONING encoder for it."""
    from parallax_testing import tiny_models

    ckpt = tiny_models.build_checkpoint(arch, 0)

    def encode(text):
        cond, pooled = ckpt.clip.encode_from_tokens(ckpt.clip.tokenize(text), return_pooled=True)
        return [[cond, {"pooled_output": pooled}]]

    return ckpt.model, encode


def tiny_model_and_prompts(arch: str, positive: str, negative: str):
    """A tiny checkpoint's ModelPatcher and its two encoded prompts (CONDITIONING lists)."""
    model, encode = tiny_encoder(arch)
    return model, encode(positive), encode(negative)


def bind(args, kwargs, names):
    out = dict(zip(names, args))
    out.update({k: v for k, v in kwargs.items()})
    return out


APPLY_ARGS = ("x", "t", "c_concat", "c_crossattn", "control", "transformer_options")


@torch.no_grad()  # as in ComfyUI's executor: no autograd graph is kept alive by the returned x0
def predict(model, positive, negative, cfg, latent, noise, sigma=6.0):
    """One x0 prediction through the stock CFGGuider; also returns every apply_model call's inputs."""
    calls = []

    def record(executor, *args, **kwargs):
        b = bind(args, kwargs, APPLY_ARGS)
        calls.append({"x": b["x"], "t": b["t"], "context": b["c_crossattn"], "y": b.get("y"),
                      "cond_or_uncond": list(b["transformer_options"]["cond_or_uncond"])})
        return executor(*args, **kwargs)

    m = model.clone()
    m.add_wrapper_with_key(compat.WrappersMP.APPLY_MODEL, "parallax_test_record", record)
    captured = {}

    def one_step(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        captured["denoised"] = model_k(x, sigmas[0] * x.new_ones([x.shape[0]]), **extra_args)
        return captured["denoised"]

    guider = comfy.samplers.CFGGuider(m)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    guider.sample(noise, latent, comfy.samplers.KSAMPLER(one_step), torch.tensor([sigma, 0.0]), seed=0,
                  disable_pbar=True)
    return captured["denoised"], calls


# ---- the independent reference -------------------------------------------------------------------

def softmax_attention(q, k, v, heads):
    """[B, Nq, C] x [B, Nk, C] -> [B, Nq, C], explicit softmax(q k^T / sqrt(d)) v."""
    b, nq, c = q.shape
    d = c // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (w @ v).transpose(1, 2).reshape(b, nq, c)


def upstream_row(q, k, v, heads, nv, ih, iw):
    bt, n, c = q.shape
    b = bt // nv
    qr = q.reshape(bt * ih, iw, c)
    kr = k.reshape(b, nv, ih, iw, c).permute(0, 2, 1, 3, 4).reshape(b, ih, nv * iw, c)
    vr = v.reshape(b, nv, ih, iw, c).permute(0, 2, 1, 3, 4).reshape(b, ih, nv * iw, c)
    kr = kr.repeat_interleave(nv, dim=0).reshape(bt * ih, nv * iw, c)  # one K/V copy per view
    vr = vr.repeat_interleave(nv, dim=0).reshape(bt * ih, nv * iw, c)
    return softmax_attention(qr, kr, vr, heads).reshape(bt, n, c)


def upstream_rowcol(q, k, v, heads, ih, iw):
    bt, n, c = q.shape
    b = bt // 6
    qv, kv, vv = (t.reshape(b, 6, ih, iw, c) for t in (q, k, v))

    def rows(t):
        return t[:, 0:4].permute(0, 2, 1, 3, 4).reshape(b * ih, 4 * iw, c)

    def cols(t):
        t = torch.cat([torch.flip(t[:, [0]], [3]), t[:, [2, 4, 5]]], dim=1)
        return t.permute(0, 3, 1, 2, 4).reshape(b * iw, 4 * ih, c)

    row = softmax_attention(rows(qv), rows(kv), rows(vv), heads).reshape(b, ih, 4, iw, c).permute(0, 2, 1, 3, 4)
    col = softmax_attention(cols(qv), cols(kv), cols(vv), heads).reshape(b, iw, 4, ih, c).permute(0, 2, 3, 1, 4)
    col = torch.cat([torch.flip(col[:, [0]], [3]), col[:, 1:]], dim=1)
    out = torch.stack([(row[:, 0] + col[:, 0]) / 2, row[:, 1], (row[:, 2] + col[:, 1]) / 2, row[:, 3], col[:, 2],
                       col[:, 3]], dim=1)
    return out.reshape(bt, n, c)


class Reference:
    """MV-Adapter assembled from the formulas with forward hooks on the unpatched UNet."""

    def __init__(self, model, path, attention, num_views, mv_scale=1.0, ref_scale=1.0, guider=None):
        """``guider``: optional ``{block: feature [V, C, h, w]}`` added to the output of each listed
        ComfyUI block (("input", id) or ("middle", 0)), tiled over the samples of the batch."""
        self.model, self.nv, self.attention, self.guider = model, num_views, attention, guider or {}
        self.mv_scale, self.ref_scale = mv_scale, ref_scale
        self.unet = model.model.diffusion_model
        host_map = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)
        self.layers: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in load_file(str(path)).items():
            if key.startswith("adapter."):
                continue
            prefix, leaf = key.split(".attn1.processor.")
            attn1 = host_map[f"{prefix}.attn1.to_q.weight"][: -len(".to_q.weight")]
            self.layers.setdefault(attn1, {})[leaf] = tensor

    @torch.no_grad()
    def capture(self, latent, context, y):
        """The reference pass: attn1 inputs (norm1 outputs) of one t = 0 pass over the raw latent."""
        states, hooks = {}, []
        for path in self.layers:
            module = self.unet.get_submodule(path)
            hooks.append(module.register_forward_pre_hook(lambda mod, args, p=path: states.__setitem__(p, args[0])))
        try:
            self.unet(latent, torch.zeros(latent.shape[0]), context=context, y=y, transformer_options={})
        finally:
            for h in hooks:
                h.remove()
        return states

    def x0(self, x, sigma, context, y, hw, states=None, zero_reference=False):
        """x0 of one CFG half with the branches added to every attn1 output."""
        h, w = hw
        hooks = []

        def branches(path, n, heads):
            t = self.layers[path]
            lin = torch.nn.functional.linear
            factor = math.isqrt(h * w // n.shape[1])
            ih, iw = h // factor, w // factor
            extra = 0
            if self.mv_scale:
                q, k, v = lin(n, t["to_q_mv.weight"]), lin(n, t["to_k_mv.weight"]), lin(n, t["to_v_mv.weight"])
                if self.attention == "row":
                    mv = upstream_row(q, k, v, heads, self.nv, ih, iw)
                else:
                    mv = upstream_rowcol(q, k, v, heads, ih, iw)
                extra = lin(mv, t["to_out_mv.0.weight"], t["to_out_mv.0.bias"]) * self.mv_scale
            if states is not None and self.ref_scale:
                r = states[path]
                r = r.repeat_interleave(n.shape[0] // r.shape[0], dim=0)  # one copy per view, as upstream
                if zero_reference:
                    r = torch.zeros_like(r)
                att = softmax_attention(lin(n, t["to_q_ref.weight"]), lin(r, t["to_k_ref.weight"]),
                                        lin(r, t["to_v_ref.weight"]), heads)
                extra = extra + lin(att, t["to_out_ref.0.weight"], t["to_out_ref.0.bias"]) * self.ref_scale
            return extra

        for path in self.layers:
            module = self.unet.get_submodule(path)
            hooks.append(module.register_forward_hook(
                lambda mod, args, out, p=path: out + branches(p, args[0], mod.heads)))
        for (kind, index), feature in self.guider.items():
            block = self.unet.middle_block if kind == "middle" else self.unet.input_blocks[index]
            # The host runs a block's layers one by one (forward_timestep_embed): hook its last layer.
            hooks.append(block[-1].register_forward_hook(
                lambda mod, args, out, f=feature: out + f.repeat(out.shape[0] // f.shape[0], 1, 1, 1)))
        try:
            return self.model.model.apply_model(x, sigma, c_crossattn=context, y=y)
        finally:
            for hk in hooks:
                hk.remove()

    @torch.no_grad()
    def predict(self, calls, cfg, hw, reference_latent=None):
        """CFG over the recorded halves: uncond + cfg (cond - uncond)."""
        halves = {}
        for call in calls:
            chunks = call["cond_or_uncond"]
            per = call["x"].shape[0] // len(chunks)
            for i, kind in enumerate(chunks):
                sl = slice(i * per, (i + 1) * per)
                halves[kind] = {k: (call[k][sl] if call[k] is not None else None) for k in ("x", "t", "context", "y")}
        states = None
        if reference_latent is not None:
            c = halves[0]
            firsts = slice(0, None, self.nv)
            refs = reference_latent.shape[0]
            states = self.capture(reference_latent * self.scale_factor(), c["context"][firsts][:refs],
                                  c["y"][firsts][:refs] if c["y"] is not None else None)
        out = {kind: self.x0(v["x"], v["t"], v["context"], v["y"], hw, states, zero_reference=kind == 1)
               for kind, v in halves.items()}
        if 1 not in out:
            return out[0]
        return out[1] + cfg * (out[0] - out[1])

    def scale_factor(self):
        return self.model.model.latent_format.scale_factor


def rel_error(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()
