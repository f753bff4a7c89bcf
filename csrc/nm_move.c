/* Token scatter / gather (nm_move.h; shared loops and the threading in nm_rows.h). */
#include "nm_rows.h"
#include "nm_move.h"

/* Output rows [o0, o1) of a scatter (unpack) or gather (pack); src row of output row o is the
 * number of mask entries set before o. */
static void nm_rows_move(const char *src, char *dst, const unsigned char *mask, const unsigned char *zero,
                         int64_t o0, int64_t o1, int64_t rowbytes, int unpack)
{
    int64_t s = 0;
    for (int64_t o = 0; o < o0; o++) s += mask[o] != 0;
    for (int64_t o = o0; o < o1; o++) {
        if (mask[o]) {
            if (unpack) memcpy(dst + o * rowbytes, src + s * rowbytes, (size_t)rowbytes);
            else memcpy(dst + s * rowbytes, src + o * rowbytes, (size_t)rowbytes);
            s++;
        } else if (unpack && !(zero && zero[o])) {
            memset(dst + o * rowbytes, 0, (size_t)rowbytes);
        }
    }
}

typedef struct nm_move_task_args {
    const char *src;
    char *dst;
    const unsigned char *mask, *zero;
    int64_t rowbytes;
    int unpack;
} nm_move_task_args;

static void nm_move_range(void *arg, int64_t o0, int64_t o1, int tid)
{
    (void)tid;
    const nm_move_task_args *a = (const nm_move_task_args *)arg;
    nm_rows_move(a->src, a->dst, a->mask, a->zero, o0, o1, a->rowbytes, a->unpack);
}

int nm_move_rows(const void *src, void *dst, const unsigned char *mask, const unsigned char *zero, int64_t rows,
                 int64_t rowbytes, int unpack, int nthreads)
{
    if (!src || !dst || !mask || rows < 0 || rowbytes < 0) return NM_EINVAL;
    if (rows == 0 || rowbytes == 0) return NM_OK;
    const int nt = nm_rows_threads(nthreads, rows * rowbytes, (int64_t)1 << 22, rows);
    nm_move_task_args ta = {(const char *)src, (char *)dst, mask, zero, rowbytes, unpack};
    nm_parallel_for(nt, rows, nm_move_range, &ta);
    return NM_OK;
}
