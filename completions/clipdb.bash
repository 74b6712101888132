# bash completion for clipdb(1): commands, their options, files and folders where they go.
# Installed as $datadir/bash-completion/completions/clipdb (loaded on demand by bash-completion).

_clipdb() {
  local cur prev words cword
  _init_completion 2>/dev/null || {
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
  }
  local commands="index search similar dedup classify info tokenize embed model help"
  local global="--db --model --help --version"
  local cmd="" i
  for ((i = 1; i < cword; i++)); do
    case ${words[i]} in
      --db | --model) ((i++)) ;;
      -*) ;;
      *) cmd=${words[i]}; break ;;
    esac
  done
  case $prev in
    --db | --image | --pixels | --model)
      COMPREPLY=($(compgen -f -- "$cur"))
      return ;;
    --exclude | --template | --text | --after | --before | --threshold | -n | --top | \
      --nprobe | --threads | --commit-every | --revision | --retries | --timeout)
      return ;;
    --under)
      COMPREPLY=($(compgen -d -- "$cur"))
      return ;;
  esac
  local opts
  case $cmd in
    "") opts="$global"
        if [[ $cur != -* ]]; then COMPREPLY=($(compgen -W "$commands" -- "$cur")); return; fi ;;
    index) opts="--local --exclude --no-videos --include-hidden --json --threads --commit-every --quiet --help" ;;
    search | similar)
      opts="-n --top --json --paths -0 --null --after --before --threshold --under --preview --local
            --help" ;;
    dedup) opts="--threshold --json --nprobe --local --help" ;;
    classify) opts="--template --json --help" ;;
    info) opts="--json --local --help" ;;
    tokenize) opts="--help" ;;
    embed) opts="--text --image --pixels --help" ;;
    model)
      if [[ $cur != -* && ${words[cword-1]} == model ]]; then
        COMPREPLY=($(compgen -W "pull list info rm" -- "$cur")); return
      fi
      opts="--revision --offline --retries --timeout --help" ;;
    help) COMPREPLY=($(compgen -W "$commands" -- "$cur")); return ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$opts $global" -- "$cur"))
  else
    case $cmd in
      index) COMPREPLY=($(compgen -d -- "$cur")) ;;
      search | similar | classify) COMPREPLY=($(compgen -f -- "$cur")) ;;
    esac
  fi
}
complete -o filenames -F _clipdb clipdb
