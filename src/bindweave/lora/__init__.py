"""LoRAs for the BindWeave DiT: loading the formats Wan LoRAs come in, fusing them, exporting ours to ComfyUI.

- :mod:`.config` (no torch): ``--lora PATH[:SCALE]`` arguments and where their files are;
- :mod:`.keys`: reading a LoRA file and converting its keys for ``BindWeavePipeline.load_lora_weights``
  (diffusers' own Wan conversion plus the MLLM connector), and checking them against the DiT;
- :mod:`.apply`: fusing the ``--lora`` LoRAs into a loaded pipeline;
- :mod:`.export`: ``bindweave export-lora``, a trained adapter as one ComfyUI / original-Wan file.
"""
