# Links of a set speed between the emulated cluster's nodes (sourced by scripts/cluster.sh).
#
#   bash scripts/cluster.sh up 4 --link 100mbit     # every node's NIC: 100 Mbit/s each way
#
# The nodes share the machine's loopback, so addresses cannot tell them apart (Open MPI's TCP
# transport publishes one address per interface: 127.0.0.1 for every node). Ports can: node K of
# the cluster owns the block of 256 ports WINDOW + 256*K .. +255. Its Open MPI listeners take the
# block's first 32 (btl_tcp_port_min_v4 in the node's own MCA file) and nodeport.so, preloaded
# into every process the cluster's environment starts, binds each outgoing TCP socket to a port of
# the rest of the block. A packet's source port then names the node that sent it and its
# destination port the node it goes to:
# - upload: an htb class per node on lo's egress, filters on (source block K, destination block J);
# - download: lo's ingress redirects the window's packets to an ifb device, where an htb class per
#   node takes (source block J, destination block K).
# Traffic inside a node (Open MPI's shared memory, its out-of-band TCP) and every packet outside
# the window passes unshaped (htb's direct queue). No latency is added (netem is not in such
# kernels); htb's burst lets 64 KiB (or 1 ms of the rate, if more) go at memory speed first.
# Each cluster takes a window of its own (from its base port) and its own filter priority, so two
# clusters with links coexist on one lo; `down` removes its classes, filters and ifb, and the
# qdiscs once no cluster uses them.

LINK_BLOCK=256           # ports per node (u32 mask 0xff00)
LINK_WINDOW_SIZE=4096    # ports per cluster (mask 0xf000): nodes 1..15
LINK_LISTEN_PORTS=32     # Open MPI's listeners at the start of each block

# The cluster's window index (0..2) and first port: 20480, 24576, 28672 (below the ephemeral
# range 32768-60999, above Slurm's ports). From the base port `up` was given, recorded with the
# rate in $DIR/link (`down` and `status` may run without PARTRAIN_CLUSTER_PORT).
link_window() {
  local base=$BASE_PORT
  [ -f "$DIR/link" ] && base=$(awk '{print $2}' "$DIR/link")
  echo $(((base / 1000) % 3))
}
link_window_port() { echo $((20480 + $(link_window) * LINK_WINDOW_SIZE)); }
link_block() { echo $(($(link_window_port) + $1 * LINK_BLOCK)); }
link_prio() { echo $((100 + $(link_window))); }
link_ifb() { echo "ptifb$(link_window)"; }
link_classid() { printf '1:%x' $(($(link_window) * 16 + $1)); }

# RATE as tc writes it (kbit, mbit, gbit), in bits per second; refuses anything else.
link_rate_bits() {
  local rate=$1 n unit
  if [[ ! $rate =~ ^([0-9]+)(kbit|mbit|gbit)$ ]]; then
    log "--link: '$rate' is not a rate as tc writes it (expected a whole number and kbit, mbit or gbit: 100mbit, 1gbit, 10gbit)"
    exit 2
  fi
  n=${BASH_REMATCH[1]}; unit=${BASH_REMATCH[2]}
  case $unit in kbit) echo $((n * 1000)) ;; mbit) echo $((n * 1000000)) ;; gbit) echo $((n * 1000000000)) ;; esac
}

# Per-node files the node's namespaces bind over: its MCA parameters (listener ports) and the
# block nodeport.so reads; the shim, built from source (gcc) into the cluster's folder.
link_node_files() {
  local n=$1 k b
  mkdir -p "$DIR/lib"
  gcc -O2 -Wall -shared -fPIC -o "$DIR/lib/nodeport.so" "$ROOT/scripts/link/nodeport.c" -ldl
  echo "0 0" > "$DIR/etc/this-node"
  for k in $(seq 1 "$n"); do
    b=$(link_block "$k")
    echo "$((b + LINK_LISTEN_PORTS)) $((b + LINK_BLOCK - 1))" > "$DIR/etc/this-node-${NODE}$k"
    { cat "$DIR/etc/openmpi-mca-params.conf"
      printf 'btl_tcp_port_min_v4 = %s\nbtl_tcp_port_range_v4 = %s\n' "$b" "$LINK_LISTEN_PORTS"; } \
      > "$DIR/etc/mca-${NODE}$k.conf"
  done
}

# One node's htb class on DEV (its upload on lo, its download on the ifb).
link_class() {
  local dev=$1 k=$2 rate=$3 burst=$4
  tc class add dev "$dev" parent 1: classid "$(link_classid "$k")" htb rate "$rate" ceil "$rate" \
    burst "$burst" cburst "$burst" quantum 60000
}

link_up() {
  local n=$1 rate=$2 bits burst prio ifb k j
  bits=$(link_rate_bits "$rate")
  [ "$n" -le 15 ] || { log "--link: at most 15 nodes per cluster (one port block each)"; exit 2; }
  burst=$((bits / 8 / 1000)); [ "$burst" -ge 65536 ] || burst=65536
  prio=$(link_prio); ifb=$(link_ifb)
  if tc filter show dev lo parent 1: 2>/dev/null | grep -q "pref $prio "; then
    log "another cluster with links uses port window $(link_window_port) (PARTRAIN_CLUSTER_PORT=$BASE_PORT): give this one another PARTRAIN_CLUSTER_PORT"
    exit 1
  fi
  rm -f "$DIR/link"
  echo "$rate $BASE_PORT" > "$DIR/link"
  link_node_files "$n"
  tc qdisc show dev lo | grep -q "htb 1: root" || tc qdisc add dev lo root handle 1: htb
  tc qdisc show dev lo | grep -q "ingress ffff:" || tc qdisc add dev lo handle ffff: ingress
  ip link add "$ifb" type ifb
  ip link set "$ifb" up
  tc qdisc add dev "$ifb" root handle 1: htb
  tc filter add dev lo parent ffff: protocol ip prio "$prio" u32 match ip sport "$(link_window_port)" 0xf000 \
    match ip dport "$(link_window_port)" 0xf000 action mirred egress redirect dev "$ifb"
  for k in $(seq 1 "$n"); do
    link_class lo "$k" "$rate" "$burst"
    link_class "$ifb" "$k" "$rate" "$burst"
    for j in $(seq 1 "$n"); do
      [ "$j" = "$k" ] && continue
      tc filter add dev lo parent 1: protocol ip prio "$prio" u32 match ip sport "$(link_block "$k")" 0xff00 \
        match ip dport "$(link_block "$j")" 0xff00 flowid "$(link_classid "$k")"
      tc filter add dev "$ifb" parent 1: protocol ip prio "$prio" u32 match ip sport "$(link_block "$j")" 0xff00 \
        match ip dport "$(link_block "$k")" 0xff00 flowid "$(link_classid "$k")"
    done
  done
}

# Removes what link_up made for this cluster (each step tolerates its part being gone already).
link_down() {
  [ -f "$DIR/link" ] || return 0
  local prio ifb k
  prio=$(link_prio); ifb=$(link_ifb)
  tc filter del dev lo parent 1: prio "$prio" 2>/dev/null || true
  tc filter del dev lo parent ffff: prio "$prio" 2>/dev/null || true
  for k in $(seq 1 15); do tc class del dev lo classid "$(link_classid "$k")" 2>/dev/null || true; done
  ip link del "$ifb" 2>/dev/null || true
  # The qdiscs go with the last cluster that shapes.
  tc class show dev lo 2>/dev/null | grep -q . || tc qdisc del dev lo root 2>/dev/null || true
  tc filter show dev lo parent ffff: 2>/dev/null | grep -q . || tc qdisc del dev lo ingress 2>/dev/null || true
  rm -f "$DIR/link" "$DIR"/etc/this-node* "$DIR"/etc/mca-*.conf
}

# One line per node: its link and the bytes its classes carried so far.
link_status() {
  if [ ! -f "$DIR/link" ]; then
    echo "links: unshaped loopback (memory speed; \`up N --link RATE\` sets a rate)"
    return 0
  fi
  local rate k up down
  rate=$(awk '{print $1}' "$DIR/link")
  for k in $(seq 1 "$(nodes)"); do
    up=$(tc -s class show dev lo classid "$(link_classid "$k")" | awk '/Sent/ {print $2; exit}')
    down=$(tc -s class show dev "$(link_ifb)" classid "$(link_classid "$k")" | awk '/Sent/ {print $2; exit}')
    echo "${NODE}$k: link $rate each way, ports $(link_block "$k")-$(($(link_block "$k") + LINK_BLOCK - 1)); sent ${up:-?} bytes, received ${down:-?} bytes across nodes"
  done
}
