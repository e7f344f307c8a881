# Sourced by the bench scripts. A bearer token must never be a command-line argument: any user
# of the machine can read another process's arguments (ps). curl reads headers from a file
# with `-H @FILE`, and `tern` reads TERN_TOKEN.
#
# auth_header_file TOKEN_FILE OUT_FILE: writes `Authorization: Bearer <token>` to OUT_FILE
# (mode 0600) and prints OUT_FILE; if TOKEN_FILE is missing or empty (a binary from before
# tokens), a header nobody reads instead. printf is a shell builtin: the token is never an
# argument of a process.
auth_header_file() {
  local token_file=$1 out=$2
  (
    umask 077
    if [ -s "$token_file" ]; then
      printf 'Authorization: Bearer %s\n' "$(cat "$token_file")"
    else
      echo 'X-Tern-No-Token: 1'
    fi >"$out"
  )
  echo "$out"
}
