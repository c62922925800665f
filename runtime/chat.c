/* chat: owns the validation of chat messages and their rendering into prompt text and ids (see
 * chat.h). The three formats, as their templates render them:
 *   Llama 3: BOS {for each: <|start_header_id|>ROLE<|end_header_id|>\n\n trim(CONTENT) <|eot_id|>}
 *            [<|start_header_id|>assistant<|end_header_id|>\n\n]
 *   ChatML:  [<|im_start|>system\nDEFAULT<|im_end|>\n when the first message is not a system one]
 *            {for each: <|im_start|>ROLE\nCONTENT<|im_end|>\n} [<|im_start|>assistant\n]
 *   Mistral: a leading system message is taken out; BOS, then alternating user/assistant turns:
 *            user: [INST] CONTENT[/INST] (the last user turn: [INST] SYSTEM\n\nCONTENT[/INST]),
 *            assistant: " " trim(CONTENT) EOS; no generation prompt.
 * Text parts of one message are joined with "\n", as vLLM does for templates that expect a
 * string. "trim" is Python's str.strip (Unicode whitespace), as in jinja2. */
#include "chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Message content larger than this is refused: the body limit bounds it anyway, but a named limit
 * gives a clear error instead of a tokenizer run over megabytes that cannot fit any context. */
#define CHAT_MAX_CONTENT (4u * 1024 * 1024)
/* A default system message longer than this in a template is not one we recognise. */
#define CHAT_MAX_DEFAULT_SYSTEM 4096

const char *chat_family_name(enum chat_family f)
{
    switch (f) {
    case CHAT_LLAMA3:
        return "Llama 3";
    case CHAT_CHATML:
        return "ChatML";
    case CHAT_MISTRAL:
        return "Mistral";
    }
    return "?";
}

/* ---- loading ---- */

/* A token field of tokenizer_config.json: a string, {"content": string}, or null/absent (""). */
static int token_text(json_t *cfg, const char *key, const char *def, char *out, const char *path,
                      char *err, size_t errlen)
{
    json_t *v = cfg ? json_object_get(cfg, key) : NULL;
    const char *s = def;
    if (cfg && v)
        s = json_is_object(v) ? json_string_value(json_object_get(v, "content"))
                              : json_string_value(v);
    if (cfg && v && !json_is_null(v) && !s) {
        snprintf(err, errlen, "%s: \"%s\" must be a string, {\"content\": string} or null", path,
                 key);
        return -1;
    }
    if (s && strlen(s) >= CHAT_MAX_TOKEN_TEXT) {
        snprintf(err, errlen, "%s: \"%s\" is too long", path, key);
        return -1;
    }
    snprintf(out, CHAT_MAX_TOKEN_TEXT, "%s", s ? s : "");
    return 0;
}

/* The template string: chat_template is a string, or a list of {name, template} of which we take
 * "default". NULL when there is none. Borrowed from cfg. */
static const char *template_string(json_t *cfg)
{
    json_t *t = cfg ? json_object_get(cfg, "chat_template") : NULL;
    if (json_is_string(t)) return json_string_value(t);
    size_t i;
    json_t *e;
    json_array_foreach(t, i, e)
    {
        const char *name = json_string_value(json_object_get(e, "name"));
        if (name && !strcmp(name, "default"))
            return json_string_value(json_object_get(e, "template"));
    }
    return NULL;
}

/* ChatML templates that add a system message when there is none write it as the Jinja literal
 * '<|im_start|>system\nTEXT<|im_end|>\n' (Qwen2, Qwen2.5). Returns a new string (escapes
 * undone), or NULL when the template has no such literal. */
static char *default_system(const char *tpl)
{
    static const char mark[] = "'<|im_start|>system\\n";
    const char *p = strstr(tpl, mark);
    if (!p) return NULL;
    p += strlen(mark);
    const char *end = strstr(p, "<|im_end|>");
    if (!end || end - p > CHAT_MAX_DEFAULT_SYSTEM || memchr(p, '\'', (size_t)(end - p)))
        return NULL;
    char *out = malloc((size_t)(end - p) + 1), *o = out;
    if (!out) return NULL;
    for (; p < end; p++) {
        if (*p == '\\' && p + 1 < end) {
            p++;
            *o++ = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static int need(const struct tok *t, const char *name, int *id, enum chat_family f, char *err,
                size_t errlen)
{
    *id = tok_find(t, name);
    if (*id >= 0) return 0;
    snprintf(err, errlen, "the tokenizer has no %s token, which the %s chat format needs", name,
             chat_family_name(f));
    return -1;
}

int chat_tpl_load(struct chat_tpl *c, const char *dir, enum model_arch arch, const struct tok *t,
                  char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    c->bos_id = c->eos_id = -1;
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    if (!cfg && json_error_code(&je) != json_error_cannot_open_file) {
        snprintf(err, errlen, "%s: %s (line %d)", path, je.text, je.line);
        return -1;
    }
    enum chat_family byarch = arch == MODEL_LLAMA     ? CHAT_LLAMA3
                              : arch == MODEL_MISTRAL ? CHAT_MISTRAL
                                                      : CHAT_CHATML;
    const char *tpl = template_string(cfg);
    if (tpl && strstr(tpl, "<|start_header_id|>"))
        c->family = CHAT_LLAMA3;
    else if (tpl && strstr(tpl, "<|im_start|>"))
        c->family = CHAT_CHATML;
    else if (tpl && strstr(tpl, "[INST]"))
        c->family = CHAT_MISTRAL;
    else {
        c->family = byarch;
        log_warn("%s: %s; using the %s chat format of architecture %s", path,
                 tpl ? "chat_template is not one we recognise (Llama 3, ChatML or Mistral)"
                     : "no chat_template",
                 chat_family_name(byarch), model_arch_name(arch));
    }
    static const char *const def_bos[] = {"<|begin_of_text|>", "", "<s>"};
    static const char *const def_eos[] = {"<|eot_id|>", "<|im_end|>", "</s>"};
    int rc = token_text(cfg, "bos_token", def_bos[c->family], c->bos, path, err, errlen) ||
             token_text(cfg, "eos_token", def_eos[c->family], c->eos, path, err, errlen);
    if (rc == 0 && c->bos[0]) rc = need(t, c->bos, &c->bos_id, c->family, err, errlen);
    if (rc == 0 && c->eos[0]) rc = need(t, c->eos, &c->eos_id, c->family, err, errlen);
    switch (c->family) {
    case CHAT_LLAMA3:
        rc = rc || need(t, "<|start_header_id|>", &c->start_header, c->family, err, errlen) ||
             need(t, "<|end_header_id|>", &c->end_header, c->family, err, errlen) ||
             need(t, "<|eot_id|>", &c->eot, c->family, err, errlen);
        break;
    case CHAT_CHATML:
        rc = rc || need(t, "<|im_start|>", &c->im_start, c->family, err, errlen) ||
             need(t, "<|im_end|>", &c->im_end, c->family, err, errlen);
        if (rc == 0 && tpl) c->default_system = default_system(tpl);
        break;
    case CHAT_MISTRAL:
        rc = rc || need(t, "[INST]", &c->inst, c->family, err, errlen) ||
             need(t, "[/INST]", &c->inst_end, c->family, err, errlen);
        if (rc == 0 && c->eos_id < 0) {
            snprintf(err, errlen, "%s: the Mistral chat format needs an eos_token", path);
            rc = -1;
        }
        break;
    }
    json_decref(cfg);
    if (rc) chat_tpl_free(c);
    return rc ? -1 : 0;
}

void chat_tpl_free(struct chat_tpl *c)
{
    free(c->default_system);
    c->default_system = NULL;
}

/* ---- messages ---- */

static void copy_cut(char *dst, size_t cap, const char *src)
{
    size_t i = 0;
    for (; i + 1 < cap && src[i]; i++)
        dst[i] = src[i];
    dst[i] = '\0';
}

static int bad(struct jsonx_err *err, const char *param, const char *msg)
{
    /* Both are cut to fit; a param names a field a few levels deep, well under 64 bytes. */
    copy_cut(err->param, sizeof err->param, param);
    copy_cut(err->message, sizeof err->message, msg);
    return -1;
}

/* Appends the text of content (a string or an array of text parts) to out. */
static int content_text(json_t *content, const char *role, const char *where, struct buf *out,
                        struct jsonx_err *err)
{
    char p[96], m[256];
    snprintf(p, sizeof p, "%s.content", where);
    if (!content || json_is_null(content)) {
        if (strcmp(role, "assistant") == 0) return buf_append(out, "", 0) ? -2 : 0;
        snprintf(m, sizeof m, "%s is missing (a string or an array of text parts)", p);
        return bad(err, p, m);
    }
    if (json_is_string(content))
        return buf_append(out, json_string_value(content), json_string_length(content)) ? -2 : 0;
    if (!json_is_array(content)) {
        snprintf(m, sizeof m, "%s must be a string or an array of text parts", p);
        return bad(err, p, m);
    }
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part)
    {
        char pp[128];
        snprintf(pp, sizeof pp, "%s[%zu]", p, i);
        const char *type = json_string_value(json_object_get(part, "type"));
        json_t *text = json_object_get(part, "text");
        if (!json_is_object(part) || !type) {
            snprintf(m, sizeof m, "%s must be an object with a \"type\"", pp);
            return bad(err, pp, m);
        }
        if (strcmp(type, "text") != 0) {
            snprintf(m, sizeof m, "%s: content part type \"%.40s\" is not supported (only text)",
                     pp, type);
            return bad(err, pp, m);
        }
        if (!json_is_string(text) || json_object_size(part) != 2) {
            snprintf(m, sizeof m, "%s must be {\"type\": \"text\", \"text\": string}", pp);
            return bad(err, pp, m);
        }
        if ((i > 0 && buf_append(out, "\n", 1)) ||
            buf_append(out, json_string_value(text), json_string_length(text)))
            return -2;
    }
    return buf_append(out, "", 0) ? -2 : 0;
}

/* Checks one message's fields; sets *role. */
static int check_message(json_t *msg, const char *where, const char **role, struct jsonx_err *err)
{
    char p[96], m[256];
    if (!json_is_object(msg)) {
        snprintf(m, sizeof m, "%s must be an object", where);
        return bad(err, where, m);
    }
    const char *key;
    json_t *v;
    json_object_foreach(msg, key, v)
    {
        snprintf(p, sizeof p, "%s.%.32s", where, key);
        if (!strcmp(key, "role") || !strcmp(key, "content")) continue;
        if (!strcmp(key, "name") && json_is_string(v)) continue;
        if (!strcmp(key, "refusal") && json_is_null(v)) continue;
        if ((!strcmp(key, "tool_calls") || !strcmp(key, "function_call") ||
             !strcmp(key, "tool_call_id")) &&
            !json_is_null(v)) {
            snprintf(m, sizeof m, "%s is not supported (no tool calling)", p);
            return bad(err, p, m);
        }
        if (json_is_null(v)) continue;
        snprintf(m, sizeof m, "%s: unknown or invalid message field", p);
        return bad(err, p, m);
    }
    snprintf(p, sizeof p, "%s.role", where);
    *role = json_string_value(json_object_get(msg, "role"));
    if (!*role) {
        snprintf(m, sizeof m, "%s is missing or not a string", p);
        return bad(err, p, m);
    }
    if (!strcmp(*role, "tool") || !strcmp(*role, "function")) {
        snprintf(m, sizeof m, "%s \"%s\" is not supported (no tool calling)", p, *role);
        return bad(err, p, m);
    }
    if (strcmp(*role, "system") && strcmp(*role, "user") && strcmp(*role, "assistant")) {
        snprintf(m, sizeof m, "%s must be \"system\", \"user\" or \"assistant\"", p);
        return bad(err, p, m);
    }
    return 0;
}

/* Python's str.isspace for one code point. */
static int py_space(unsigned cp)
{
    return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

/* The code point of the valid UTF-8 sequence at p of n bytes; its length in *len. */
static unsigned utf8_at(const unsigned char *p, size_t *len)
{
    if (p[0] < 0x80) return *len = 1, p[0];
    if (p[0] < 0xE0) return *len = 2, (unsigned)(p[0] & 0x1F) << 6 | (p[1] & 0x3F);
    if (p[0] < 0xF0)
        return *len = 3,
               (unsigned)(p[0] & 0x0F) << 12 | (unsigned)(p[1] & 0x3F) << 6 | (p[2] & 0x3F);
    return *len = 4, (unsigned)(p[0] & 0x07) << 18 | (unsigned)(p[1] & 0x3F) << 12 |
                         (unsigned)(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
}

/* Jinja's trim (str.strip()) of valid UTF-8: adjusts *s and *n. */
static void trim(const char **s, size_t *n)
{
    const unsigned char *p = (const unsigned char *)*s;
    size_t len = *n, cl;
    while (len && py_space(utf8_at(p, &cl)))
        p += cl, len -= cl;
    while (len) {
        size_t k = len - 1;
        while (k > 0 && (p[k] & 0xC0) == 0x80)
            k--;
        if (!py_space(utf8_at(p + k, &cl))) break;
        len = k;
    }
    *s = (const char *)p;
    *n = len;
}

/* ---- rendering ---- */

struct msg {
    const char *role;
    struct buf text;
};

/* Emits the prompt: text as rendered, and ids where each run of text between special tokens is
 * encoded as one piece (what Hugging Face's tokenizer does with the rendered string, special
 * tokens split out first). */
struct render {
    const struct tok *t;
    struct buf *text;
    struct tok_ids *ids;
    struct buf pending;
    int rc; /* sticky: -2 once anything failed */
};

static void r_text(struct render *r, const char *s, size_t n)
{
    if (r->rc) return;
    if ((r->text && buf_append(r->text, s, n)) || (r->ids && buf_append(&r->pending, s, n)))
        r->rc = -2;
}

static void r_str(struct render *r, const char *s)
{
    r_text(r, s, strlen(s));
}

static void r_flush(struct render *r)
{
    char e[128];
    if (!r->rc && r->ids && r->pending.len &&
        tok_encode(r->t, r->pending.data, r->pending.len, 0, r->ids, e, sizeof e))
        r->rc = -2;
    r->pending.len = 0;
}

static void r_special(struct render *r, int id, const char *literal)
{
    if (r->rc) return;
    r_flush(r);
    if ((r->text && buf_append(r->text, literal, strlen(literal))) ||
        (r->ids && tok_ids_push(r->ids, id)))
        r->rc = -2;
}

static void r_special_id(struct render *r, int id)
{
    size_t n = 0;
    const char *b = tok_bytes(r->t, id, &n);
    if (r->rc) return;
    r_flush(r);
    if ((r->text && buf_append(r->text, b ? b : "", b ? n : 0)) ||
        (r->ids && tok_ids_push(r->ids, id)))
        r->rc = -2;
}

static void render_llama3(const struct chat_tpl *c, struct render *r, const struct msg *m, size_t n,
                          int add_gen)
{
    if (n && c->bos_id >= 0) r_special(r, c->bos_id, c->bos);
    for (size_t i = 0; i < n; i++) {
        const char *s = m[i].text.data;
        size_t len = m[i].text.len;
        trim(&s, &len);
        r_special_id(r, c->start_header);
        r_str(r, m[i].role);
        r_special_id(r, c->end_header);
        r_str(r, "\n\n");
        r_text(r, s, len);
        r_special_id(r, c->eot);
    }
    if (add_gen) {
        r_special_id(r, c->start_header);
        r_str(r, "assistant");
        r_special_id(r, c->end_header);
        r_str(r, "\n\n");
    }
}

static void render_chatml(const struct chat_tpl *c, struct render *r, const struct msg *m, size_t n,
                          int add_gen)
{
    for (size_t i = 0; i < n; i++) {
        if (i == 0 && c->default_system && strcmp(m[0].role, "system") != 0) {
            r_special_id(r, c->im_start);
            r_str(r, "system\n");
            r_str(r, c->default_system);
            r_special_id(r, c->im_end);
            r_str(r, "\n");
        }
        r_special_id(r, c->im_start);
        r_str(r, m[i].role);
        r_str(r, "\n");
        r_text(r, m[i].text.data, m[i].text.len);
        r_special_id(r, c->im_end);
        r_str(r, "\n");
    }
    if (add_gen) {
        r_special_id(r, c->im_start);
        r_str(r, "assistant\n");
    }
}

static int render_mistral(const struct chat_tpl *c, struct render *r, const struct msg *m, size_t n,
                          struct jsonx_err *err)
{
    const struct msg *sys = n && !strcmp(m[0].role, "system") ? &m[0] : NULL;
    size_t first = sys ? 1 : 0;
    for (size_t i = first; i < n; i++) {
        char p[48];
        snprintf(p, sizeof p, "messages[%zu].role", i);
        int user = !strcmp(m[i].role, "user");
        if (user != ((i - first) % 2 == 0))
            return bad(err, p,
                       "after an optional system message, the roles must alternate user, "
                       "assistant, user, ... (this model's chat format)");
        if (strcmp(m[i].role, "user") && strcmp(m[i].role, "assistant"))
            return bad(err, p, "only a first message may be a system message");
    }
    if (c->bos_id >= 0) r_special(r, c->bos_id, c->bos);
    for (size_t i = first; i < n; i++) {
        if (!strcmp(m[i].role, "user")) {
            r_special_id(r, c->inst);
            r_str(r, " ");
            if (sys && i == n - 1) {
                r_text(r, sys->text.data, sys->text.len);
                r_str(r, "\n\n");
            }
            r_text(r, m[i].text.data, m[i].text.len);
            r_special_id(r, c->inst_end);
        } else {
            const char *s = m[i].text.data;
            size_t len = m[i].text.len;
            trim(&s, &len);
            r_str(r, " ");
            r_text(r, s, len);
            r_special(r, c->eos_id, c->eos);
        }
    }
    return 0;
}

int chat_render(const struct chat_tpl *c, const struct tok *t, json_t *messages,
                int add_generation_prompt, struct buf *text, struct tok_ids *ids,
                struct jsonx_err *err)
{
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return bad(err, "messages", "messages must be a non-empty array");
    size_t n = json_array_size(messages);
    struct msg *m = calloc(n, sizeof *m);
    if (!m) return -2;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *msg = json_array_get(messages, i);
        char where[32];
        snprintf(where, sizeof where, "messages[%zu]", i);
        rc = check_message(msg, where, &m[i].role, err);
        if (rc == 0)
            rc = content_text(json_object_get(msg, "content"), m[i].role, where, &m[i].text, err);
        if (rc == 0 && m[i].text.len > CHAT_MAX_CONTENT) {
            char p[96];
            snprintf(p, sizeof p, "%s.content", where);
            rc = bad(err, p, "message content is too long");
        }
    }
    struct render r = {.t = t, .text = text, .ids = ids};
    if (rc == 0 && text && buf_append(text, "", 0)) rc = -2;
    if (rc == 0) {
        switch (c->family) {
        case CHAT_LLAMA3:
            render_llama3(c, &r, m, n, add_generation_prompt);
            break;
        case CHAT_CHATML:
            render_chatml(c, &r, m, n, add_generation_prompt);
            break;
        case CHAT_MISTRAL:
            rc = render_mistral(c, &r, m, n, err);
            break;
        }
        r_flush(&r);
        if (rc == 0) rc = r.rc;
    }
    buf_free(&r.pending);
    for (size_t i = 0; i < n; i++)
        buf_free(&m[i].text);
    free(m);
    return rc;
}

int chat_encode(const struct chat_tpl *c, const struct tok *t, json_t *messages,
                int add_generation_prompt, struct tok_ids *out, struct jsonx_err *err)
{
    return chat_render(c, t, messages, add_generation_prompt, NULL, out, err);
}
