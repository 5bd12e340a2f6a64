#!/bin/sh
# Build the OpenJD test lane's image (recipe.env here); see ../build-debian-image.sh for the arguments.
exec "$(dirname "$0")/../build-debian-image.sh" "$(dirname "$0")" "$@"
