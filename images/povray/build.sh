#!/bin/sh
# Build the POV-Ray renderer image (recipe.env here); see ../build-debian-image.sh for the arguments.
exec "$(dirname "$0")/../build-debian-image.sh" "$(dirname "$0")" "$@"
