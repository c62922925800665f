/* chat: owns the validation of chat messages and their rendering into prompt ids (see chat.h).
 * The template is Llama 3's:
 *   <|begin_of_text|>{for each message: <|start_header_id|>ROLE<|end_header_id|>\n\nCONTENT
 *   <|eot_id|>}<|start_header_id|>assistant<|end_header_id|>\n\n
 * Text parts of one message are joined with "\n", as vLLM does for templates that expect a
 * string. */
#include "chat.h"

#include <stdio.h>
#include <string.h>

/* Message content larger than this is refused: the body limit bounds it anyway, but a named limit
 * gives a clear error instead of a tokenizer run over megabytes that cannot fit any context. */
#define CHAT_MAX_CONTENT (4u * 1024 * 1024)

int chat_tpl_init(struct chat_tpl *c, const struct tok *t, char *err, size_t errlen)
{
    struct {
        const char *name;
        int *dst;
    } need[] = {{"<|begin_of_text|>", &c->bot},
                {"<|start_header_id|>", &c->start_header},
                {"<|end_header_id|>", &c->end_header},
                {"<|eot_id|>", &c->eot}};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
        *need[i].dst = tok_find(t, need[i].name);
        if (*need[i].dst < 0) {
            snprintf(err, errlen,
                     "tokenizer has no %s token, which the Llama 3 chat template needs",
                     need[i].name);
            return -1;
        }
    }
    return 0;
}

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

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static int encode_message(const struct chat_tpl *c, const struct tok *t, const char *role,
                          const char *content, size_t len, struct tok_ids *out)
{
    char e[128];
    /* Jinja's trim strips whitespace at both ends. */
    while (len && is_space(content[0]))
        content++, len--;
    while (len && is_space(content[len - 1]))
        len--;
    struct buf body = {0};
    int rc = tok_ids_push(out, c->start_header) ||
             tok_encode(t, role, strlen(role), 0, out, e, sizeof e) ||
             tok_ids_push(out, c->end_header) || buf_append(&body, "\n\n", 2) ||
             buf_append(&body, content, len) ||
             tok_encode(t, body.data, body.len, 0, out, e, sizeof e) || tok_ids_push(out, c->eot);
    buf_free(&body);
    return rc ? -2 : 0;
}

int chat_encode(const struct chat_tpl *c, const struct tok *t, json_t *messages,
                int add_generation_prompt, struct tok_ids *out, struct jsonx_err *err)
{
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return bad(err, "messages", "messages must be a non-empty array");
    if (tok_ids_push(out, c->bot) != 0) return -2;
    size_t i;
    json_t *msg;
    json_array_foreach(messages, i, msg)
    {
        char where[32];
        snprintf(where, sizeof where, "messages[%zu]", i);
        const char *role = NULL;
        int rc = check_message(msg, where, &role, err);
        struct buf text = {0};
        if (rc == 0) rc = content_text(json_object_get(msg, "content"), role, where, &text, err);
        if (rc == 0 && text.len > CHAT_MAX_CONTENT) {
            char p[96];
            snprintf(p, sizeof p, "%s.content", where);
            rc = bad(err, p, "message content is too long");
        }
        if (rc == 0) rc = encode_message(c, t, role, text.data, text.len, out);
        buf_free(&text);
        if (rc) return rc;
    }
    if (add_generation_prompt) {
        char e[128];
        if (tok_ids_push(out, c->start_header) ||
            tok_encode(t, "assistant", 9, 0, out, e, sizeof e) ||
            tok_ids_push(out, c->end_header) || tok_encode(t, "\n\n", 2, 0, out, e, sizeof e))
            return -2;
    }
    return 0;
}
