# The scenario table (lab/scenarios.sh), host side: reading it, resolving
# one entry (aliases, groups, defaults) into S_<field> variables, the
# check list, and the scenario.env that L1 and L2 source. Sourced by
# lab/run after assets.sh (for die).

declare -A LAB_TABLE=() LAB_GROUPS=()
LAB_ORDER=()
# Every field an entry may set (README "Scenarios as data").
LAB_FIELDS="alias prep work vmm modes poll rounds reps mib vcpus npt backing l1_mem timeout l2_timeout checks l2_modules l2_files l2_bins l1_bins env prebuild display what"

# group @NAME ITEM...: a named list, usable as @NAME in any list field.
group() {
  local g=$1; shift
  [[ $g == @* ]] || die "lab/scenarios.sh: group name '$g' must start with @"
  LAB_GROUPS[$g]="$*"
}

# scenario NAME KEY=VALUE...: one table entry.
scenario() {
  local name=$1 a; shift
  [ -z "${LAB_TABLE[$name]+x}" ] || die "lab/scenarios.sh: scenario $name defined twice"
  for a in "$@"; do
    [[ $a == *=* ]] || die "lab/scenarios.sh: $name: '$a' is not key=value"
    [[ " $LAB_FIELDS " == *" ${a%%=*} "* ]] || die "lab/scenarios.sh: $name: unknown field '${a%%=*}'"
  done
  LAB_TABLE[$name]=$(printf '%q ' "$@")
  LAB_ORDER+=("$name")
}

lab_table_load() { . "$LAB_DIR/scenarios.sh"; }

# lab_expand LIST: the items of a comma- or space-separated list, groups
# expanded (recursively), space-separated.
lab_expand() {
  local item out=()
  for item in ${1//,/ }; do
    if [[ $item == @* ]]; then
      [ -n "${LAB_GROUPS[$item]+x}" ] || die "lab/scenarios.sh: no group $item"
      # shellcheck disable=SC2207
      out+=($(lab_expand "${LAB_GROUPS[$item]}"))
    else
      out+=("$item")
    fi
  done
  echo "${out[*]}"
}

# lab_resolve NAME: sets S_<field> for every field (the entry's value, an
# alias's target's value, or the default) and S_base (the scenario whose
# scripts run: NAME, or an alias's target). Fails for an unknown NAME.
lab_resolve() {
  local f a target="" name=$1
  [ -n "${LAB_TABLE[$name]+x}" ] || return 1
  for f in $LAB_FIELDS; do declare -g "S_$f="; done
  eval "set -- ${LAB_TABLE[$name]}"
  for a; do [[ $a == alias=* ]] && target=${a#alias=}; done
  if [ -n "$target" ]; then
    [ -n "${LAB_TABLE[$target]+x}" ] || die "lab/scenarios.sh: $name is an alias of unknown scenario $target"
    eval "set -- ${LAB_TABLE[$target]} ${LAB_TABLE[$name]}"
  fi
  for a; do declare -g "S_${a%%=*}=${a#*=}"; done
  S_base=${target:-$name}
  # Defaults.
  : "${S_vmm:=iovmm}" "${S_poll:=adaptive}" "${S_mib:=16}" "${S_vcpus:=2}" "${S_npt:=1}" "${S_backing:=hugetlbfs}"
  : "${S_l1_mem:=3072}" "${S_timeout:=900}" "${S_l2_timeout:=600}" "${S_display:=quiet}" "${S_modes:=off}"
  set -- "$name"
  [ -n "$S_work" ] || die "lab/scenarios.sh: $1 has no work= field"
  [ -f "$LAB_DIR/lib/l1-$S_work.sh" ] && [ -f "$LAB_DIR/lib/l2-$S_work.sh" ] \
    || die "lab/scenarios.sh: $1: work=$S_work needs lab/lib/l1-$S_work.sh and lab/lib/l2-$S_work.sh"
  for a in ${S_prep//,/ }; do
    [ -f "$LAB_DIR/lib/l1-prep-$a.sh" ] || die "lab/scenarios.sh: $1: prep=$a needs lab/lib/l1-prep-$a.sh"
  done
  case "$S_display" in quiet|table|console) ;; *) die "lab/scenarios.sh: $1: display=$S_display (quiet, table or console)";; esac
}

# lab_checks: the resolved entry's check names, one a line: checks
# without `#` first, then those with `#` once per round (`#` -> -ROUND),
# or once without a suffix when the entry has no rounds.
lab_checks() {
  local c r plain=() rounded=()
  for c in $(lab_expand "$S_checks"); do
    if [[ $c == *'#'* ]]; then rounded+=("$c"); else plain+=("$c"); fi
  done
  for c in "${plain[@]}"; do echo "$c"; done
  if [ -n "$S_rounds" ]; then
    for r in ${S_rounds//,/ }; do for c in "${rounded[@]}"; do echo "${c//#/-$r}"; done; done
  else
    for c in "${rounded[@]}"; do echo "${c//#/}"; done
  fi
}

# lab_env: the resolved entry as shell assignments for L1's and L2's
# scripts (/stage/scenario.env, /scenario.env in L2's image).
lab_env() {
  local kv
  q() { [[ $2 != *"'"* ]] || die "lab/scenarios.sh: a ' in $1"; echo "$1='$2'"; }
  q SCENARIO_NAME "$S_base"
  q PREP "${S_prep//,/ }"
  q WORK "$S_work"
  q MODES "${S_modes//,/ }"
  q POLL_POLICY "$S_poll"
  q ROUNDS "${S_rounds//,/ }"
  q REPS "$S_reps"
  q L2_MODULES "$(lab_expand "$S_l2_modules")"
  for kv in ${S_env//,/ }; do
    [[ $kv == [A-Z]*=* ]] || die "lab/scenarios.sh: env item '$kv' is not NAME=VALUE"
    q "${kv%%=*}" "${kv#*=}"
  done
}

# lab_files LIST ROOT [bin]: copies each SRC[:DEST] of LIST into ROOT (at
# DEST, default SRC); with `bin`, with the shared libraries it links.
lab_files() {
  local item src dst
  for item in $(lab_expand "$1"); do
    src=${item%%:*}; dst=${item#*:}; [ "$dst" = "$item" ] && dst=$src
    [ -n "$src" ] && [ -f "$src" ] || die "scenario $NAME: file '$src' (for $dst) does not exist (an unset variable in lab/scenarios.sh, or its prebuild not run?)"
    if [ "${3:-}" = bin ]; then
      lab_copy_binary "$src" "$2" "$dst"
    else
      mkdir -p "$2$(dirname "$dst")"; cp "$src" "$2$dst"
    fi
  done
}

# lab_files_key: a hash of the extra files' contents (part of the L2 image's cache key).
lab_files_key() {
  local item src
  for item in $(lab_expand "$S_l2_files") $(lab_expand "$S_l2_bins"); do
    src=${item%%:*}; [ -f "$src" ] && sha256sum "$src"
  done | sha256sum | cut -c1-12
}
