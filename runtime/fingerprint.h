/* fingerprint: owns the deployment fingerprint of a loaded checkpoint, the one string that says
 * which weights, at which precision, split how and run by what, answered every request. Two
 * replicas with the same fingerprint give the same answers (the gateway passes the header on, so a
 * client can tell when that changes).
 *
 *   OpenRunPod-Fingerprint: weights=sha256:<16 hex>; dtype=bf16; tp=2; backend=cpu; version=0.3.0
 *   system_fingerprint:     fp_<12 hex of sha256 of the header's value>
 *
 * The weights digest is sha256 over one line "<file name> <sha256 of the file>\n" per safetensors
 * file of the checkpoint, in byte order of the names: the same number follows from the catalog's
 * manifest (which lists each file's sha256) without reading the weights again. */
#ifndef ORP_RT_FINGERPRINT_H
#define ORP_RT_FINGERPRINT_H

#include <stddef.h>

#define RT_VERSION "0.3.0"

struct rt_fingerprint {
    char weights[65]; /* the full digest, lowercase hex */
    char header[192]; /* the OpenRunPod-Fingerprint value */
    char system[20];  /* the OpenAI system_fingerprint */
};

/* Hashes every safetensors file st_open(dir) maps; the dtype is the one that holds most of the
 * weights' bytes ("bf16", "f16" or "f32": checkpoints often keep norms in f32). 0, or -1 with err
 * (a file that cannot be read). */
int rt_fingerprint_compute(const char *dir, int tp, const char *backend, struct rt_fingerprint *fp,
                           char *err, size_t errlen);

#endif
