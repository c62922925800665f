/* Unit tests of auth's pure parts: new keys have the documented shape and checksum, and a key
 * with one character changed is refused without a database; old sk-orp- keys keep their shape
 * check; argon2id hashes carry the OWASP parameters, verify the right password and refuse a
 * wrong one or a malformed hash; the CSRF token is a fixed function of the session secret and
 * differs between sessions. */
#include <string.h>

#include "auth.h"
#include "check.h"

int main(void)
{
    char k[AUTH_KEY_LEN + 1], k2[AUTH_KEY_LEN + 1];
    CHECK_INT_EQ(auth_key_new(k), 0);
    CHECK_INT_EQ(strlen(k), AUTH_KEY_LEN);
    CHECK(!strncmp(k, "orp_sk_", 7));
    CHECK(auth_key_well_formed(k));
    CHECK_INT_EQ(auth_key_new(k2), 0);
    CHECK(strcmp(k, k2) != 0);
    /* Every single-character typo in the random part or the checksum is caught. */
    for (size_t i = 7; i < AUTH_KEY_LEN; i++) {
        char t[AUTH_KEY_LEN + 1];
        memcpy(t, k, sizeof t);
        t[i] = t[i] == 'a' ? 'b' : 'a';
        CHECK(!auth_key_well_formed(t));
    }
    char shorter[AUTH_KEY_LEN + 1];
    memcpy(shorter, k, sizeof shorter);
    shorter[AUTH_KEY_LEN - 1] = '\0';
    CHECK(!auth_key_well_formed(shorter));
    CHECK(!auth_key_well_formed(""));
    CHECK(!auth_key_well_formed("garbage"));
    CHECK(auth_key_well_formed("sk-orp-0123456789abcdef0123456789abcdef0123456789abcdef"));
    CHECK(!auth_key_well_formed("sk-orp-0123456789abcdef0123456789abcdef0123456789abcdeg"));
    CHECK(!auth_key_well_formed("sk-orp-nope"));

    char h[AUTH_PASSWORD_HASH_MAX], h2[AUTH_PASSWORD_HASH_MAX];
    CHECK_INT_EQ(auth_password_hash("correct horse", h), 0);
    CHECK(!strncmp(h, "$argon2id$v=19$m=19456,t=2,p=1$", 31));
    CHECK(auth_password_verify(h, "correct horse"));
    CHECK(!auth_password_verify(h, "correct horsE"));
    CHECK(!auth_password_verify(h, ""));
    CHECK_INT_EQ(auth_password_hash("correct horse", h2), 0);
    CHECK(strcmp(h, h2) != 0); /* salted */
    CHECK(!auth_password_verify("$argon2id$garbage", "x"));
    CHECK(!auth_password_verify("plain", "plain"));
    CHECK(!auth_password_verify(NULL, "x"));

    char a[AUTH_CSRF_HEX + 1], b[AUTH_CSRF_HEX + 1], c[AUTH_CSRF_HEX + 1];
    const char *s1 = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const char *s2 = "10112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    auth_csrf_token(s1, a);
    auth_csrf_token(s1, b);
    auth_csrf_token(s2, c);
    CHECK_INT_EQ(strlen(a), AUTH_CSRF_HEX);
    CHECK_STR_EQ(a, b);
    CHECK(strcmp(a, c) != 0);
    CHECK(strstr(s1, a) == NULL);
    return 0;
}
