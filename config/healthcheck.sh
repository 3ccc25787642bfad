#!/bin/bash
# The container's HEALTHCHECK: GET /livez on pgenrich's admin listener (no curl in the image;
# bash's /dev/tcp does). Healthy when the admin listener is turned off (PGENRICH_ADMIN_LISTEN="").
addr=${PGENRICH_ADMIN_LISTEN:-}
[[ -z $addr ]] && exit 0
port=${addr##*:}
exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET /livez HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
read -r -t 3 status <&3 || exit 1
[[ $status == *" 200 "* ]]
