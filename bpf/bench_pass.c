/* SPDX-License-Identifier: Apache-2.0
 *
 * bench_pass.c - the floor for bench/xdp.py: an XDP program that only passes.
 */
#include <uapi/linux/bpf.h>

int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
