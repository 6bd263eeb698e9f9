#!/usr/bin/env bash
# make-image.sh DIR REF: builds a ~100 MB, 5-layer OCI image in DIR/layout with umoci (busybox, then four layers
# of 100 files of 256 KiB random bytes each) and pushes it to REF (a plain-HTTP loopback registry) with skopeo.
set -euo pipefail
dir="$1" ref="$2"
rm -rf "$dir"; mkdir -p "$dir"
L="$dir/layout"
umoci init --layout "$L"
umoci new --image "$L:big"
mkdir -p "$dir/l0/bin"
cp /bin/busybox "$dir/l0/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -sf busybox "$dir/l0/bin/$a"; done
tar -C "$dir/l0" -cf "$dir/l0.tar" --owner=0 --group=0 .
umoci raw add-layer --image "$L:big" "$dir/l0.tar"
for i in 1 2 3 4; do
  mkdir -p "$dir/l$i/data$i"
  for j in $(seq 100); do head -c 262144 /dev/urandom > "$dir/l$i/data$i/f$j"; done
  tar -C "$dir/l$i" -cf "$dir/l$i.tar" --owner=0 --group=0 .
  umoci raw add-layer --image "$L:big" "$dir/l$i.tar"
  rm -rf "$dir/l$i" "$dir/l$i.tar"
done
umoci config --image "$L:big" --config.env PATH=/bin
skopeo copy -q --dest-tls-verify=false "oci:$L:big" "docker://$ref"
echo "layers: 5 (busybox + 4 x 100 files x 256 KiB random)"
echo "compressed blobs: $(du -sb "$L/blobs" | cut -f1) bytes"
echo "uncompressed layer content: $(( $(du -sb "$dir/l0" | cut -f1) + 4 * 100 * 262144 )) bytes"
