/* Token row movement of the runtime: byte copies between packed and padded token rows. */
#ifndef NM_MOVE_H
#define NM_MOVE_H

#include <stddef.h>
#include <stdint.h>

/* Token rows between a packed [count, rowbytes] buffer and a padded [rows, rowbytes] one, mask[rows]
 * (nonzero = real token, count of them = packed rows): unpack copies the k-th real row to the k-th
 * set position and zeroes the others (every output byte written once); pack gathers the set rows
 * in order.  Plain copies, any element type.  zero (unpack, may be NULL): rows of dst known to hold
 * zeros already (nonzero entries), which are not rewritten. */
int nm_move_rows(const void *src, void *dst, const unsigned char *mask, const unsigned char *zero, int64_t rows,
                 int64_t rowbytes, int unpack, int nthreads);

#endif
