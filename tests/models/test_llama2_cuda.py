"""GPU-only checks: every attention path runs on SDPA's fused kernels (no math fallback)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tunekit.models.llama2 import llama2_tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-4), (torch.bfloat16, 5e-2)])
def test_gqa_paths_use_fused_kernels_and_match_cpu(dtype, atol):
    torch.manual_seed(0)
    cpu = llama2_tiny().eval()
    a, b = torch.randint(0, 512, (1, 50)), torch.randint(0, 512, (1, 70))
    packed = torch.cat([a, b], 1)
    pos = torch.cat([torch.arange(50), torch.arange(70)]).unsqueeze(0)
    mask = torch.block_diag(torch.ones(50, 50), torch.ones(70, 70)).bool().tril().unsqueeze(0)
    with torch.no_grad():
        ref_packed, ref_a = cpu(packed, mask=mask, input_pos=pos), cpu(a)
        gpu = llama2_tiny().eval()
        gpu.load_state_dict(cpu.state_dict())
        gpu.to("cuda", dtype)
        gpu.init_buffers()
        with sdpa_kernel(FUSED):
            out_packed = gpu(packed.cuda(), mask=mask.cuda(), input_pos=pos.cuda()).float().cpu()
            out_a = gpu(a.cuda()).float().cpu()
            gpu.setup_caches(1, dtype, max_seq_len=64)
            gpu(a[:, :49].cuda(), input_pos=torch.arange(49, device="cuda")[None])
            step = gpu(a[:, 49:].cuda(), input_pos=torch.tensor([[49]], device="cuda")).float().cpu()
    torch.testing.assert_close(out_packed, ref_packed, rtol=0, atol=atol)
    torch.testing.assert_close(out_a, ref_a, rtol=0, atol=atol)
    torch.testing.assert_close(step[:, -1], ref_a[:, -1], rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gqa_greedy_generation_on_gpu_equals_full_recompute(dtype):
    """Cached GQA decoding on CUDA (whose SDPA kernels return transposed memory layouts) picks
    the argmax of a full forward pass at every step."""
    from tunekit.generation import generate

    torch.manual_seed(0)
    model = llama2_tiny().eval().to("cuda", dtype)
    model.init_buffers()
    prompt = torch.randint(0, 512, (2, 7), device="cuda")
    with torch.no_grad():
        out = generate(model, prompt, max_new_tokens=6, temperature=0)
        tokens = torch.as_tensor(out.tokens, device="cuda")
        full = model(torch.cat([prompt, tokens], 1))[:, prompt.shape[1] - 1 : -1].float()
    assert tokens.shape == (2, 6)
    picked = full.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    # every pick is the full pass's maximum (up to the dtype's rounding between the two paths)
    torch.testing.assert_close(picked, full.max(-1).values, rtol=0, atol=1e-4 if dtype == torch.float32 else 0.1)
