#!/bin/sh
# Print the Standard Webhooks v1 headers for one request body, one "name: value" per line,
# ready for `curl -H @-`.
#
#   set -a; . ./var/dev.env; set +a
#   scripts/sign-webhook.sh "$BODY" | curl -H @- -H 'content-type: application/json' \
#     --data-binary "$BODY" http://127.0.0.1:8000/v1/webhooks/generic
#
# Each route has its own key: --route generic (the default) signs with
# RECGATE_GENERIC_WEBHOOK_SECRET, --route asterisk with RECGATE_ASTERISK_WEBHOOK_SECRET, and
# --route sim with the key recgate derives from the generic secret for the simulator:
# HMAC-SHA256(generic key, "recgate webhook route: sim").
# WEBHOOK_ID and WEBHOOK_TIMESTAMP override the generated id and the current time.
set -eu

route=generic
if [ "${1:-}" = "--route" ]; then
  [ $# -ge 2 ] || { echo "usage: $0 [--route generic|sim|asterisk] BODY" >&2; exit 2; }
  route=$2
  shift 2
fi
[ $# -eq 1 ] || { echo "usage: $0 [--route generic|sim|asterisk] BODY" >&2; exit 2; }
body=$1
case $route in
  generic|sim) secret=${RECGATE_GENERIC_WEBHOOK_SECRET:?set RECGATE_GENERIC_WEBHOOK_SECRET (whsec_<base64>)} ;;
  asterisk) secret=${RECGATE_ASTERISK_WEBHOOK_SECRET:?set RECGATE_ASTERISK_WEBHOOK_SECRET (whsec_<base64>)} ;;
  *) echo "$0: unknown route $route (generic, sim or asterisk)" >&2; exit 2 ;;
esac
id=${WEBHOOK_ID:-msg_$(openssl rand -hex 12)}
ts=${WEBHOOK_TIMESTAMP:-$(date +%s)}

# The HMAC key is the base64-decoded part after "whsec_", passed to openssl as hex.
key=$(printf '%s\n' "${secret#whsec_}" | openssl base64 -d | od -An -v -tx1 | tr -d ' \n')
[ -n "$key" ] || { echo "$0: secret is not whsec_<base64>" >&2; exit 2; }
if [ "$route" = sim ]; then
  key=$(printf '%s' "recgate webhook route: sim" \
    | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key" -binary | od -An -v -tx1 | tr -d ' \n')
fi
sig=$(printf '%s.%s.%s' "$id" "$ts" "$body" \
  | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key" -binary | openssl base64 -A)

printf 'webhook-id: %s\nwebhook-timestamp: %s\nwebhook-signature: v1,%s\n' "$id" "$ts" "$sig"
