#!/usr/bin/env bash
# MFT with LoRA on a real pretrained chat model, SmolLM2-135M-Instruct, on the CPU: only adapters train, and the
# MFT teacher is the same model with its adapters off (no second copy of the weights). LoRA-FT and LoRA-MFT (rank
# 16) on the offline product-catalogue chats of ../smollm2_chat_mft, the specialization/degeneralization table,
# then the MFT adapter exported in HF-PEFT form (what NIM serves from NIM_PEFT_SOURCE), loaded with peft onto the
# transformers base, and generation from it. See README.md in this folder.
#
#   examples/smollm2_lora_mft/run.sh            # the full run
#   examples/smollm2_lora_mft/run.sh --smoke    # 2 iterations, tiny windows: checks every step
#   examples/smollm2_lora_mft/run.sh --work DIR -- peft.target_modules=[linear_qkv]   # Hydra overrides
#
# The steps are ../smollm2_chat_mft/run.sh's, with --lora 16 (same options and environment; LORA_EXAMPLE_WORK
# is the default of --work here).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for arg in "$@"; do
    [[ $arg == -- ]] && break
    if [[ $arg == -h || $arg == --help ]]; then sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0; fi
done
export MFT_EXAMPLE_WORK=${LORA_EXAMPLE_WORK:-}
exec "$HERE/../smollm2_chat_mft/run.sh" --lora 16 --name smollm2_lora_mft "$@"
