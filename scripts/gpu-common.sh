# Sourced by scripts/gpu-*.sh (not run on its own).
#
# gpu_torch_env: LD_LIBRARY_PATH gets the lib folder of the machine's Python torch 2.11
#   (or $TORCH_LIB), where the `mome` binary finds libtorch and libnccl.
# gpu_shards_1024 LOG: the demo corpus balanced and encoded with the paper's tokenizer
#   at 1024 tokens into runs/shards-1024 (made once; errors go to LOG).

gpu_torch_env() {
  if [ -z "${TORCH_LIB:-}" ]; then
    TORCH_LIB=$("${PYTHON:-python3}" -c 'import torch,os;print(os.path.dirname(torch.__file__))')/lib
  fi
  export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
}

gpu_shards_1024() {
  local log=$1 tok=data/tokenizer/En_De_Fr_Py_Tokenizer/tokenizer.json
  if [ ! -e runs/kd-gpu-data/balanced/balance_report.json ]; then
    "$MOME" data balance --domain en=data/demo/en.jsonl --domain fr=data/demo/fr.jsonl \
      --domain de=data/demo/de.jsonl --domain py=data/demo/py.jsonl --valid-fraction 0.1 \
      --seed 0 --max-diff-percent 5 --id-field id --tokenizer "$tok" --out runs/kd-gpu-data/balanced \
      >/dev/null 2>>"$log"
  fi
  if [ ! -e runs/shards-1024/manifest.json ]; then
    "$MOME" data encode --tokenizer "$tok" --input runs/kd-gpu-data/balanced --seq-len 1024 \
      --out runs/shards-1024 >/dev/null 2>>"$log"
  fi
}
