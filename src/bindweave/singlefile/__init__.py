"""Single component files in the layouts ComfyUI users download (Comfy-Org's repackaged Wan 2.1 files, a
Qwen2.5-VL-7B text-encoder file), loaded exactly into the components :class:`BindWeavePipeline` uses.

- :func:`~bindweave.singlefile.umt5.load_umt5_file`: ``umt5_xxl_fp16`` / ``umt5_xxl_fp8_e4m3fn_scaled``;
- :func:`~bindweave.singlefile.clip_vision.load_clip_vision_file`: ``clip_vision_h``;
- :func:`~bindweave.singlefile.wan_vae.load_wan_vae_file`: ``wan_2.1_vae``;
- :func:`~bindweave.singlefile.qwen_vl.load_qwen_vl_file`: ``qwen_2.5_vl_7b`` (and its ``fp8_scaled``).

The DiT's single files (Kijai's fp8_scaled BindWeave included) are :mod:`bindweave.models.single_file`'s.
Float8 weights are dequantised by :mod:`bindweave.singlefile.reader`.
"""
