/*
 * A simulated KAZTOKEN: a PKCS#11 library for training and tests, not the vendor's library.
 *
 * SoftHSM2 keeps the objects and does the cryptography; this library forwards every call to it and adds what
 * a KAZTOKEN in a USB reader does and SoftHSM2 does not:
 *   - readers: one slot per reader (CKF_REMOVABLE_DEVICE|CKF_HW_SLOT), its token plugged in or pulled out;
 *   - PIN retry counters for the user and the admin (SO), which lock at zero, shared between processes;
 *   - the Rutoken-family extension C_EX_GetTokenInfoExtended (exact counters, PIN policy and "not default"
 *     flags), with the size negotiation of the vendor's library;
 *   - key generation as slow as the real token's, on demand.
 *
 * Everything lives in the directory named by KAZTOKEN_SIM_DIR (no root, no daemon, any number at once):
 *   softhsm2.conf, tokens/        SoftHSM2's configuration and token directory
 *   readers/<N>.state             one reader (slot id N) and its token: key=value lines, changed under flock
 * The state never holds a PIN: whether a PIN is the factory default is a flag set when the PIN is set.
 * core/simulator.py writes the same files (readers, plugging, settings); the two keep to one format.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

#define MAX_READERS 256
#define MAX_SESSIONS 4096
#define FACTORY_USER_PIN "12345678"
#define FACTORY_SO_PIN "87654321"
#define MANUFACTURER "KAZTOKEN (simulated)"
#define MODEL "KAZTOKEN (sim)"

/* The Rutoken-family extension (rtpkcs11t.h): the caller states the size of the structure it knows. */
typedef struct CK_TOKEN_INFO_EXTENDED {
    CK_ULONG ulSizeofThisStructure;
    CK_ULONG ulTokenType;
    CK_ULONG ulProtocolNumber;
    CK_ULONG ulMicrocodeNumber;
    CK_ULONG ulOrderNumber;
    CK_FLAGS flags;
    CK_ULONG ulMaxAdminPinLen;
    CK_ULONG ulMinAdminPinLen;
    CK_ULONG ulMaxUserPinLen;
    CK_ULONG ulMinUserPinLen;
    CK_ULONG ulMaxAdminRetryCount;
    CK_ULONG ulAdminRetryCountLeft;
    CK_ULONG ulMaxUserRetryCount;
    CK_ULONG ulUserRetryCountLeft;
    CK_BYTE serialNumber[8];
    CK_ULONG ulTotalMemory;
    CK_ULONG ulFreeMemory;
    CK_BYTE ATR[64];
    CK_ULONG ulATRLen;
    CK_ULONG ulTokenClass;
    CK_ULONG ulBatteryVoltage;
    CK_ULONG ulBodyColor;
    CK_ULONG ulFirmwareChecksum;
    CK_ULONG ulBatteryPercentage;
    CK_ULONG ulBatteryFlags;
} CK_TOKEN_INFO_EXTENDED;

#define TOKEN_FLAGS_ADMIN_CHANGE_USER_PIN 0x1UL
#define TOKEN_FLAGS_USER_CHANGE_USER_PIN 0x2UL
#define TOKEN_FLAGS_ADMIN_PIN_NOT_DEFAULT 0x4UL
#define TOKEN_FLAGS_USER_PIN_NOT_DEFAULT 0x8UL
#define OLD_EXTENDED_SIZE (offsetof(CK_TOKEN_INFO_EXTENDED, ulTokenClass) + sizeof(CK_ULONG))

/* One reader and its token, as in readers/<N>.state. */
typedef struct reader_state {
    char serial[17];          /* the token's own serial, 16 characters */
    int present;              /* the token is in the reader */
    unsigned long generation; /* counts plug changes: sessions of an older generation are gone */
    char softhsm_serial[17];  /* the SoftHSM2 token holding its objects; empty: not initialised */
    unsigned long user_max, user_left, so_max, so_left;
    int user_default, so_default; /* the PIN is the factory one */
    unsigned long policy;         /* TOKEN_FLAGS_*_CHANGE_USER_PIN */
    unsigned long keygen_delay_ms;
} reader_state;

typedef struct session_entry {
    CK_SESSION_HANDLE handle;
    CK_SLOT_ID reader;
    unsigned long generation;
    int dead; /* closed because its token was pulled out: every later call is CKR_SESSION_HANDLE_INVALID */
} session_entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static void *inner_handle;
static CK_FUNCTION_LIST_PTR inner;
static int initialised;
static int inner_initialised;
static char sim_dir[PATH_MAX];
static session_entry sessions[MAX_SESSIONS];
static size_t session_count;
/* What C_WaitForSlotEvent last reported, per reader: present and generation (+1 so 0 means unseen). */
static unsigned long event_seen[MAX_READERS];
static CK_FUNCTION_LIST function_list;

/* --- the state files ------------------------------------------------------------------------------------ */

static int reader_path(CK_SLOT_ID slot, char *out, size_t size) {
    if (!sim_dir[0] || slot >= MAX_READERS) return -1;
    int n = snprintf(out, size, "%s/readers/%lu.state", sim_dir, (unsigned long)slot);
    return (n < 0 || (size_t)n >= size) ? -1 : 0;
}

static void copy_field(char *dest, size_t size, const char *value) {
    size_t i = 0;
    for (; value[i] && value[i] != '\n' && i + 1 < size; i++) dest[i] = isprint((unsigned char)value[i]) ? value[i] : '?';
    dest[i] = 0;
}

static void parse_state(const char *text, reader_state *state) {
    memset(state, 0, sizeof *state);
    state->present = 1;
    state->user_max = state->user_left = state->so_max = state->so_left = 10;
    state->user_default = state->so_default = 1;
    state->policy = TOKEN_FLAGS_ADMIN_CHANGE_USER_PIN | TOKEN_FLAGS_USER_CHANGE_USER_PIN;
    const char *line = text;
    while (line && *line) {
        const char *eq = strchr(line, '=');
        const char *end = strchr(line, '\n');
        if (eq && (!end || eq < end)) {
            size_t key_len = (size_t)(eq - line);
            const char *value = eq + 1;
            unsigned long number = strtoul(value, NULL, 10);
#define KEY(name) (key_len == sizeof(name) - 1 && strncmp(line, name, key_len) == 0)
            if (KEY("serial")) copy_field(state->serial, sizeof state->serial, value);
            else if (KEY("present")) state->present = number != 0;
            else if (KEY("generation")) state->generation = number;
            else if (KEY("softhsm_serial")) copy_field(state->softhsm_serial, sizeof state->softhsm_serial, value);
            else if (KEY("user_max")) state->user_max = number;
            else if (KEY("user_left")) state->user_left = number;
            else if (KEY("so_max")) state->so_max = number;
            else if (KEY("so_left")) state->so_left = number;
            else if (KEY("user_default")) state->user_default = number != 0;
            else if (KEY("so_default")) state->so_default = number != 0;
            else if (KEY("policy")) state->policy = number & 3;
            else if (KEY("keygen_delay_ms")) state->keygen_delay_ms = number;
#undef KEY
        }
        line = end ? end + 1 : NULL;
    }
    if (state->user_left > state->user_max) state->user_left = state->user_max;
    if (state->so_left > state->so_max) state->so_left = state->so_max;
}

static int format_state(const reader_state *state, char *out, size_t size) {
    return snprintf(out, size,
                    "serial=%s\npresent=%d\ngeneration=%lu\nsofthsm_serial=%s\nuser_max=%lu\nuser_left=%lu\n"
                    "so_max=%lu\nso_left=%lu\nuser_default=%d\nso_default=%d\npolicy=%lu\nkeygen_delay_ms=%lu\n",
                    state->serial, state->present, state->generation, state->softhsm_serial, state->user_max,
                    state->user_left, state->so_max, state->so_left, state->user_default, state->so_default,
                    state->policy, state->keygen_delay_ms);
}

/* Opens and locks a reader's state file (shared or exclusive) and reads it; returns the descriptor or -1. */
static int open_state(CK_SLOT_ID slot, int exclusive, reader_state *state) {
    char path[PATH_MAX + 32];
    if (reader_path(slot, path, sizeof path) != 0) return -1;
    int fd = open(path, (exclusive ? O_RDWR : O_RDONLY) | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || flock(fd, exclusive ? LOCK_EX : LOCK_SH) != 0) {
        close(fd);
        return -1;
    }
    char text[4096];
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    if (n < 0) {
        close(fd);
        return -1;
    }
    text[n] = 0;
    parse_state(text, state);
    return fd;
}

static int read_state(CK_SLOT_ID slot, reader_state *state) {
    int fd = open_state(slot, 0, state);
    if (fd < 0) return -1;
    close(fd);
    return 0;
}

static int write_state(int fd, const reader_state *state) {
    char text[4096];
    int n = format_state(state, text, sizeof text);
    if (n < 0 || (size_t)n >= sizeof text) return -1;
    if (ftruncate(fd, 0) != 0 || pwrite(fd, text, (size_t)n, 0) != n) return -1;
    return 0;
}

static void close_state(int fd) {
    flock(fd, LOCK_UN);
    close(fd);
}

/* The readers there are, sorted by slot id. */
static size_t list_readers(CK_SLOT_ID *out, size_t max) {
    char path[PATH_MAX + 16];
    if (!sim_dir[0]) return 0;
    snprintf(path, sizeof path, "%s/readers", sim_dir);
    DIR *dir = opendir(path);
    if (!dir) return 0;
    unsigned char seen[MAX_READERS] = {0};
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        char *end;
        unsigned long id = strtoul(entry->d_name, &end, 10);
        if (end != entry->d_name && strcmp(end, ".state") == 0 && id < MAX_READERS) seen[id] = 1;
    }
    closedir(dir);
    size_t count = 0;
    for (CK_SLOT_ID id = 0; id < MAX_READERS && count < max; id++)
        if (seen[id]) out[count++] = id;
    return count;
}

static int pin_is(const CK_UTF8CHAR *pin, CK_ULONG len, const char *factory) {
    return pin && len == strlen(factory) && memcmp(pin, factory, len) == 0;
}

/* --- SoftHSM2 underneath -------------------------------------------------------------------------------- */

static const char *softhsm_path(void) {
    static char path[PATH_MAX];
    const char *configured = getenv("KAZTOKEN_SIM_SOFTHSM");
    if (configured && *configured) return configured;
    /* A private copy next to this library (made by the build) is a separate instance from a SoftHSM2 that the
     * same process loads itself: dlopen() would otherwise hand both the same, already initialised library. */
    Dl_info info;
    if (dladdr((void *)&softhsm_path, &info) && info.dli_fname) {
        snprintf(path, sizeof path, "%s", info.dli_fname);
        char *slash = strrchr(path, '/');
        if (slash) {
            snprintf(slash + 1, sizeof path - (size_t)(slash + 1 - path), "libsofthsm2-for-sim.so");
            if (access(path, R_OK) == 0) return path;
        }
    }
    return "/usr/lib/softhsm/libsofthsm2.so";
}

static CK_RV inner_start(void) {
    char conf[PATH_MAX + 32];
    snprintf(conf, sizeof conf, "%s/softhsm2.conf", sim_dir);
    const char *old = getenv("SOFTHSM2_CONF");
    char *saved = old ? strdup(old) : NULL;
    /* SoftHSM2 reads its configuration from the environment at C_Initialize; the process's own value comes
     * back right after. */
    setenv("SOFTHSM2_CONF", conf, 1);
    CK_C_INITIALIZE_ARGS args = {0};
    args.flags = CKF_OS_LOCKING_OK;
    CK_RV rv = inner->C_Initialize(&args);
    if (saved) {
        setenv("SOFTHSM2_CONF", saved, 1);
        free(saved);
    } else {
        unsetenv("SOFTHSM2_CONF");
    }
    if (rv == CKR_OK) inner_initialised = 1;
    return rv;
}

/* Every session of this process becomes invalid (SoftHSM2 restarted, or a reader's token pulled out). */
static void forget_sessions(CK_SLOT_ID reader, int all) {
    for (size_t i = 0; i < session_count; i++) {
        if ((all || sessions[i].reader == reader) && !sessions[i].dead) {
            if (!all) inner->C_CloseSession(sessions[i].handle);
            sessions[i].dead = 1;
        }
    }
}

/* Where SoftHSM2 keeps each token this process has found: its slot ids derive from the serial and stay the same
 * until SoftHSM2 starts again, and asking every slot for its serial on every call would cost more than the call. */
static struct {
    char serial[17];
    CK_SLOT_ID slot;
} found[MAX_READERS];
static size_t found_count;

/* SoftHSM2 sees tokens another process made only when it starts again. */
static CK_RV inner_restart(void) {
    if (inner_initialised) inner->C_Finalize(NULL);
    inner_initialised = 0;
    found_count = 0;
    forget_sessions(0, 1);
    return inner_start();
}

static void padded(unsigned char *dest, size_t size, const char *text) {
    memset(dest, ' ', size);
    size_t len = strlen(text);
    memcpy(dest, text, len < size ? len : size);
}

/* The SoftHSM2 slot holding the token with this SoftHSM2 serial, or the free (uninitialised) one when
 * serial is empty. Tries once more after a restart of SoftHSM2 (the token was made by another process). */
static CK_RV find_inner_slot(const char *serial, CK_SLOT_ID *out) {
    if (*serial) {
        for (size_t i = 0; i < found_count; i++) {
            if (strcmp(found[i].serial, serial) == 0) {
                *out = found[i].slot;
                return CKR_OK;
            }
        }
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        CK_SLOT_ID slots[512];
        CK_ULONG count = 512;
        CK_RV rv = inner->C_GetSlotList(CK_TRUE, slots, &count);
        if (rv != CKR_OK) return rv;
        for (CK_ULONG i = 0; i < count; i++) {
            CK_TOKEN_INFO info;
            if (inner->C_GetTokenInfo(slots[i], &info) != CKR_OK) continue;
            if (!*serial) {
                if (!(info.flags & CKF_TOKEN_INITIALIZED)) {
                    *out = slots[i];
                    return CKR_OK;
                }
                continue;
            }
            char text[17];
            memcpy(text, info.serialNumber, 16);
            text[16] = 0;
            for (int k = 15; k >= 0 && text[k] == ' '; k--) text[k] = 0;
            if ((info.flags & CKF_TOKEN_INITIALIZED) && strcmp(text, serial) == 0) {
                *out = slots[i];
                if (found_count < MAX_READERS) {
                    snprintf(found[found_count].serial, sizeof found[found_count].serial, "%s", serial);
                    found[found_count++].slot = slots[i];
                }
                return CKR_OK;
            }
        }
        /* Tokens another process made, and the next free slot after one was initialised here (SoftHSM2 offers
         * a new one only when it starts), appear after a restart. */
        if (attempt == 0) {
            rv = inner_restart();
            if (rv != CKR_OK) return rv;
        }
    }
    return CKR_DEVICE_ERROR;
}

/* --- the session table ---------------------------------------------------------------------------------- */

static session_entry *find_session(CK_SESSION_HANDLE handle) {
    for (size_t i = 0; i < session_count; i++)
        if (sessions[i].handle == handle) return &sessions[i];
    return NULL;
}

/* Remembers a new session; -1 when the table is full of open ones. A closed entry is reused first, then one
 * whose token was pulled out (its next call then answers CKR_SESSION_HANDLE_INVALID at once, which it would
 * anyway after CKR_DEVICE_REMOVED). */
static int add_session(CK_SESSION_HANDLE handle, CK_SLOT_ID reader, unsigned long generation) {
    session_entry *entry = find_session(handle);
    for (size_t i = 0; i < session_count && !entry; i++)
        if (sessions[i].dead && sessions[i].handle == 0) entry = &sessions[i];
    if (!entry && session_count < MAX_SESSIONS) entry = &sessions[session_count++];
    for (size_t i = 0; i < session_count && !entry; i++)
        if (sessions[i].dead) entry = &sessions[i];
    if (!entry) return -1;
    entry->handle = handle;
    entry->reader = reader;
    entry->generation = generation;
    entry->dead = 0;
    return 0;
}

static void drop_session(CK_SESSION_HANDLE handle) {
    session_entry *entry = find_session(handle);
    if (entry) {
        entry->handle = 0;
        entry->dead = 1;
    }
}

/* Whether a session may go on: its reader still holds the token it was opened on. A pulled-out token's
 * sessions are closed here; the first call on one answers CKR_DEVICE_REMOVED, later ones HANDLE_INVALID. */
static CK_RV check_session(CK_SESSION_HANDLE handle, CK_SLOT_ID *reader) {
    if (!initialised) return CKR_CRYPTOKI_NOT_INITIALIZED;
    session_entry *entry = find_session(handle);
    if (!entry) return CKR_SESSION_HANDLE_INVALID;
    if (entry->dead) return CKR_SESSION_HANDLE_INVALID;
    reader_state state;
    if (read_state(entry->reader, &state) != 0 || !state.present || state.generation != entry->generation) {
        CK_SLOT_ID gone = entry->reader;
        forget_sessions(gone, 0);
        return CKR_DEVICE_REMOVED;
    }
    if (reader) *reader = entry->reader;
    return CKR_OK;
}

/* --- general and slot functions ------------------------------------------------------------------------- */

static void remember_events(void) {
    CK_SLOT_ID readers[MAX_READERS];
    size_t count = list_readers(readers, MAX_READERS);
    memset(event_seen, 0, sizeof event_seen);
    for (size_t i = 0; i < count; i++) {
        reader_state state;
        if (read_state(readers[i], &state) == 0) event_seen[readers[i]] = state.generation * 2 + state.present + 1;
    }
}

static CK_RV sim_Initialize(CK_VOID_PTR args) {
    (void)args;
    pthread_mutex_lock(&lock);
    CK_RV rv = CKR_OK;
    if (initialised) {
        rv = CKR_CRYPTOKI_ALREADY_INITIALIZED;
        goto out;
    }
    const char *dir = getenv("KAZTOKEN_SIM_DIR");
    sim_dir[0] = 0;
    if (dir && *dir && strlen(dir) < sizeof sim_dir - 64) snprintf(sim_dir, sizeof sim_dir, "%s", dir);
    if (!inner_handle) {
        inner_handle = dlopen(softhsm_path(), RTLD_NOW | RTLD_LOCAL);
        if (!inner_handle) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
        CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(inner_handle, "C_GetFunctionList");
        if (!get || get(&inner) != CKR_OK || !inner) {
            rv = CKR_GENERAL_ERROR;
            goto out;
        }
    }
    found_count = 0;
    if (sim_dir[0]) {
        rv = inner_start();
        if (rv != CKR_OK) goto out;
    }
    session_count = 0;
    remember_events();
    initialised = 1;
out:
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV sim_Finalize(CK_VOID_PTR reserved) {
    if (reserved) return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    CK_RV rv = CKR_OK;
    if (!initialised) rv = CKR_CRYPTOKI_NOT_INITIALIZED;
    else {
        if (inner_initialised) inner->C_Finalize(NULL);
        inner_initialised = 0;
        initialised = 0;
        session_count = 0;
    }
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV sim_GetInfo(CK_INFO_PTR info) {
    if (!initialised) return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (!info) return CKR_ARGUMENTS_BAD;
    memset(info, 0, sizeof *info);
    info->cryptokiVersion.major = 2;
    info->cryptokiVersion.minor = 40;
    padded(info->manufacturerID, sizeof info->manufacturerID, MANUFACTURER);
    padded(info->libraryDescription, sizeof info->libraryDescription, "KAZTOKEN simulator (training)");
    info->libraryVersion.major = 1;
    return CKR_OK;
}

static CK_RV sim_GetSlotList(CK_BBOOL present_only, CK_SLOT_ID_PTR list, CK_ULONG_PTR count) {
    if (!initialised) return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (!count) return CKR_ARGUMENTS_BAD;
    CK_SLOT_ID readers[MAX_READERS], chosen[MAX_READERS];
    size_t n = list_readers(readers, MAX_READERS), k = 0;
    for (size_t i = 0; i < n; i++) {
        reader_state state;
        if (read_state(readers[i], &state) != 0) continue;
        if (present_only && !state.present) continue;
        chosen[k++] = readers[i];
    }
    if (!list) {
        *count = k;
        return CKR_OK;
    }
    if (*count < k) {
        *count = k;
        return CKR_BUFFER_TOO_SMALL;
    }
    memcpy(list, chosen, k * sizeof *chosen);
    *count = k;
    return CKR_OK;
}

static CK_RV sim_GetSlotInfo(CK_SLOT_ID slot, CK_SLOT_INFO_PTR info) {
    if (!initialised) return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (!info) return CKR_ARGUMENTS_BAD;
    reader_state state;
    if (read_state(slot, &state) != 0) return CKR_SLOT_ID_INVALID;
    memset(info, 0, sizeof *info);
    char text[64];
    snprintf(text, sizeof text, "KAZTOKEN simulated USB reader %lu", (unsigned long)slot);
    padded(info->slotDescription, sizeof info->slotDescription, text);
    padded(info->manufacturerID, sizeof info->manufacturerID, MANUFACTURER);
    info->flags = CKF_REMOVABLE_DEVICE | CKF_HW_SLOT | (state.present ? CKF_TOKEN_PRESENT : 0);
    info->hardwareVersion.major = 1;
    info->firmwareVersion.major = 1;
    return CKR_OK;
}

/* The reader's state, its token present; CKR_SLOT_ID_INVALID / CKR_TOKEN_NOT_PRESENT otherwise. */
static CK_RV present_token(CK_SLOT_ID slot, reader_state *state) {
    if (!initialised) return CKR_CRYPTOKI_NOT_INITIALIZED;
    if (read_state(slot, state) != 0) return CKR_SLOT_ID_INVALID;
    if (!state->present) return CKR_TOKEN_NOT_PRESENT;
    if (!inner_initialised) return CKR_DEVICE_ERROR;
    return CKR_OK;
}

static CK_FLAGS pin_flags(const reader_state *state, CK_FLAGS flags) {
    flags &= ~(CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_LOCKED | CKF_USER_PIN_TO_BE_CHANGED |
               CKF_SO_PIN_COUNT_LOW | CKF_SO_PIN_FINAL_TRY | CKF_SO_PIN_LOCKED | CKF_SO_PIN_TO_BE_CHANGED);
    if (state->user_left == 0) flags |= CKF_USER_PIN_LOCKED;
    else if (state->user_left == 1) flags |= CKF_USER_PIN_FINAL_TRY | CKF_USER_PIN_COUNT_LOW;
    else if (state->user_left < state->user_max) flags |= CKF_USER_PIN_COUNT_LOW;
    if (state->so_left == 0) flags |= CKF_SO_PIN_LOCKED;
    else if (state->so_left == 1) flags |= CKF_SO_PIN_FINAL_TRY | CKF_SO_PIN_COUNT_LOW;
    else if (state->so_left < state->so_max) flags |= CKF_SO_PIN_COUNT_LOW;
    return flags;
}

static CK_RV token_info_locked(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info, reader_state *state) {
    CK_RV rv = present_token(slot, state);
    if (rv != CKR_OK) return rv;
    CK_SLOT_ID inner_slot;
    rv = find_inner_slot(state->softhsm_serial, &inner_slot);
    if (rv == CKR_OK) rv = inner->C_GetTokenInfo(inner_slot, info);
    if (rv != CKR_OK) return rv;
    if (!state->softhsm_serial[0]) {
        /* As from the factory: no file system, no PINs, nothing a counter could say. */
        padded(info->label, sizeof info->label, "");
        info->flags &= ~(CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED);
        info->flags = pin_flags(&(reader_state){.user_max = 1, .user_left = 1, .so_max = 1, .so_left = 1}, info->flags);
    } else {
        info->flags = pin_flags(state, info->flags);
    }
    padded(info->manufacturerID, sizeof info->manufacturerID, MANUFACTURER);
    padded(info->model, sizeof info->model, MODEL);
    padded(info->serialNumber, sizeof info->serialNumber, state->serial);
    info->hardwareVersion = (CK_VERSION){1, 0};
    info->firmwareVersion = (CK_VERSION){1, 0};
    return CKR_OK;
}

static CK_RV sim_GetTokenInfo(CK_SLOT_ID slot, CK_TOKEN_INFO_PTR info) {
    if (!info) return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    reader_state state;
    CK_RV rv = token_info_locked(slot, info, &state);
    pthread_mutex_unlock(&lock);
    return rv;
}

CK_RV C_EX_GetTokenInfoExtended(CK_SLOT_ID slot, CK_TOKEN_INFO_EXTENDED *info) {
    if (!info) return CKR_ARGUMENTS_BAD;
    CK_ULONG size = info->ulSizeofThisStructure;
    if (size != sizeof(CK_TOKEN_INFO_EXTENDED) && size != OLD_EXTENDED_SIZE) return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    reader_state state;
    CK_TOKEN_INFO token;
    CK_RV rv = token_info_locked(slot, &token, &state);
    pthread_mutex_unlock(&lock);
    if (rv != CKR_OK) return rv;
    CK_TOKEN_INFO_EXTENDED out;
    memset(&out, 0, sizeof out);
    out.ulSizeofThisStructure = size;
    out.ulTokenType = 0xFF; /* TOKEN_TYPE_UNKNOWN: a simulation claims no real model */
    out.flags = state.policy | (state.so_default ? 0 : TOKEN_FLAGS_ADMIN_PIN_NOT_DEFAULT) |
                (state.user_default ? 0 : TOKEN_FLAGS_USER_PIN_NOT_DEFAULT);
    out.ulMaxAdminPinLen = out.ulMaxUserPinLen = token.ulMaxPinLen;
    out.ulMinAdminPinLen = out.ulMinUserPinLen = token.ulMinPinLen;
    out.ulMaxAdminRetryCount = state.so_max;
    out.ulAdminRetryCountLeft = state.so_left;
    out.ulMaxUserRetryCount = state.user_max;
    out.ulUserRetryCountLeft = state.user_left;
    for (int i = 0; i < 8; i++) {
        unsigned int byte = 0;
        sscanf(state.serial + 8 + i, "%1x", &byte);
        out.serialNumber[i] = (CK_BYTE)byte;
    }
    out.ulTotalMemory = token.ulTotalPublicMemory;
    out.ulFreeMemory = token.ulFreePublicMemory;
    memcpy(info, &out, size);
    return CKR_OK;
}

static CK_RV sim_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR slot, CK_VOID_PTR reserved) {
    if (reserved || !slot) return CKR_ARGUMENTS_BAD;
    for (;;) {
        pthread_mutex_lock(&lock);
        if (!initialised) {
            pthread_mutex_unlock(&lock);
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        }
        CK_SLOT_ID readers[MAX_READERS];
        size_t count = list_readers(readers, MAX_READERS);
        for (size_t i = 0; i < count; i++) {
            reader_state state;
            if (read_state(readers[i], &state) != 0) continue;
            unsigned long now = state.generation * 2 + state.present + 1;
            if (event_seen[readers[i]] != now) {
                event_seen[readers[i]] = now;
                *slot = readers[i];
                pthread_mutex_unlock(&lock);
                return CKR_OK;
            }
        }
        pthread_mutex_unlock(&lock);
        if (flags & CKF_DONT_BLOCK) return CKR_NO_EVENT;
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

static CK_RV sim_GetMechanismList(CK_SLOT_ID slot, CK_MECHANISM_TYPE_PTR list, CK_ULONG_PTR count) {
    pthread_mutex_lock(&lock);
    reader_state state;
    CK_SLOT_ID inner_slot;
    CK_RV rv = present_token(slot, &state);
    if (rv == CKR_OK) rv = find_inner_slot(state.softhsm_serial, &inner_slot);
    pthread_mutex_unlock(&lock);
    return rv == CKR_OK ? inner->C_GetMechanismList(inner_slot, list, count) : rv;
}

static CK_RV sim_GetMechanismInfo(CK_SLOT_ID slot, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR info) {
    pthread_mutex_lock(&lock);
    reader_state state;
    CK_SLOT_ID inner_slot;
    CK_RV rv = present_token(slot, &state);
    if (rv == CKR_OK) rv = find_inner_slot(state.softhsm_serial, &inner_slot);
    pthread_mutex_unlock(&lock);
    return rv == CKR_OK ? inner->C_GetMechanismInfo(inner_slot, type, info) : rv;
}

static CK_RV sim_InitToken(CK_SLOT_ID slot, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len, CK_UTF8CHAR_PTR label) {
    pthread_mutex_lock(&lock);
    reader_state state;
    CK_RV rv = present_token(slot, &state);
    if (rv != CKR_OK) goto out;
    int fd = open_state(slot, 1, &state);
    if (fd < 0) {
        rv = CKR_DEVICE_ERROR;
        goto out;
    }
    if (state.softhsm_serial[0] && state.so_left == 0) {
        rv = CKR_PIN_LOCKED; /* only good for replacement, as the real token */
        close_state(fd);
        goto out;
    }
    CK_SLOT_ID inner_slot;
    rv = find_inner_slot(state.softhsm_serial, &inner_slot);
    if (rv != CKR_OK && state.softhsm_serial[0]) {
        /* Its SoftHSM2 token is gone (removed by hand): the reader holds a blank token again. */
        state.softhsm_serial[0] = 0;
        rv = find_inner_slot("", &inner_slot);
    }
    if (rv == CKR_OK) {
        rv = inner->C_InitToken(inner_slot, pin, pin_len, label); /* CKR_SESSION_EXISTS while sessions are open */
        if (rv == CKR_PIN_INCORRECT && state.softhsm_serial[0]) {
            if (state.so_left > 0) state.so_left--;
        } else if (rv == CKR_OK) {
            CK_TOKEN_INFO info;
            if (inner->C_GetTokenInfo(inner_slot, &info) == CKR_OK) {
                memcpy(state.softhsm_serial, info.serialNumber, 16);
                state.softhsm_serial[16] = 0;
                for (int k = 15; k >= 0 && state.softhsm_serial[k] == ' '; k--) state.softhsm_serial[k] = 0;
            }
            state.so_left = state.so_max;
            state.user_left = state.user_max;
            state.so_default = pin_is(pin, pin_len, FACTORY_SO_PIN);
            state.user_default = 1;
        }
        if (write_state(fd, &state) != 0 && rv == CKR_OK) rv = CKR_DEVICE_ERROR;
    }
    close_state(fd);
out:
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV sim_OpenSession(CK_SLOT_ID slot, CK_FLAGS flags, CK_VOID_PTR app, CK_NOTIFY notify,
                             CK_SESSION_HANDLE_PTR handle) {
    if (!handle) return CKR_ARGUMENTS_BAD;
    pthread_mutex_lock(&lock);
    reader_state state;
    CK_SLOT_ID inner_slot;
    CK_RV rv = present_token(slot, &state);
    if (rv == CKR_OK && !state.softhsm_serial[0]) rv = CKR_TOKEN_NOT_RECOGNIZED;
    if (rv == CKR_OK) rv = find_inner_slot(state.softhsm_serial, &inner_slot);
    if (rv == CKR_OK) rv = inner->C_OpenSession(inner_slot, flags, app, notify, handle);
    if (rv == CKR_OK && add_session(*handle, slot, state.generation) != 0) {
        inner->C_CloseSession(*handle);
        rv = CKR_SESSION_COUNT;
    }
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV sim_CloseSession(CK_SESSION_HANDLE handle) {
    pthread_mutex_lock(&lock);
    CK_RV rv = check_session(handle, NULL);
    if (rv == CKR_OK) {
        rv = inner->C_CloseSession(handle);
        drop_session(handle);
    } else if (rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_DEVICE_REMOVED) {
        drop_session(handle);
    }
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV sim_CloseAllSessions(CK_SLOT_ID slot) {
    pthread_mutex_lock(&lock);
    reader_state state;
    CK_RV rv = present_token(slot, &state);
    if (rv == CKR_OK) {
        for (size_t i = 0; i < session_count; i++) {
            if (sessions[i].reader == slot && !sessions[i].dead) {
                inner->C_CloseSession(sessions[i].handle);
                sessions[i].dead = 1;
                sessions[i].handle = 0;
            }
        }
    }
    pthread_mutex_unlock(&lock);
    return rv;
}

/* --- PINs: counted, locked, and whether they are the factory ones ---------------------------------------- */

/* Who a C_SetPIN changes the PIN of: the SO when the SO is logged in, else the user. */
static int session_is_so(CK_SESSION_HANDLE handle) {
    CK_SESSION_INFO info;
    return inner->C_GetSessionInfo(handle, &info) == CKR_OK && info.state == CKS_RW_SO_FUNCTIONS;
}

static CK_RV sim_Login(CK_SESSION_HANDLE handle, CK_USER_TYPE user, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len) {
    pthread_mutex_lock(&lock);
    CK_SLOT_ID slot;
    CK_RV rv = check_session(handle, &slot);
    if (rv != CKR_OK) goto out;
    reader_state state;
    int fd = open_state(slot, 1, &state);
    if (fd < 0) {
        rv = CKR_DEVICE_ERROR;
        goto out;
    }
    unsigned long *left = user == CKU_SO ? &state.so_left : &state.user_left;
    unsigned long max = user == CKU_SO ? state.so_max : state.user_max;
    if ((user == CKU_SO || user == CKU_USER) && *left == 0) {
        rv = CKR_PIN_LOCKED; /* even the right PIN */
    } else {
        rv = inner->C_Login(handle, user, pin, pin_len);
        if (user == CKU_SO || user == CKU_USER) {
            if (rv == CKR_PIN_INCORRECT) (*left)--;
            else if (rv == CKR_OK) *left = max;
            if ((rv == CKR_PIN_INCORRECT || rv == CKR_OK) && write_state(fd, &state) != 0) rv = CKR_DEVICE_ERROR;
        }
    }
    close_state(fd);
out:
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV sim_InitPIN(CK_SESSION_HANDLE handle, CK_UTF8CHAR_PTR pin, CK_ULONG pin_len) {
    pthread_mutex_lock(&lock);
    CK_SLOT_ID slot;
    CK_RV rv = check_session(handle, &slot);
    if (rv != CKR_OK) goto out;
    reader_state state;
    int fd = open_state(slot, 1, &state);
    if (fd < 0) {
        rv = CKR_DEVICE_ERROR;
        goto out;
    }
    rv = inner->C_InitPIN(handle, pin, pin_len);
    if (rv == CKR_OK) {
        state.user_left = state.user_max; /* the admin unblocks the user PIN */
        state.user_default = pin_is(pin, pin_len, FACTORY_USER_PIN);
        if (write_state(fd, &state) != 0) rv = CKR_DEVICE_ERROR;
    }
    close_state(fd);
out:
    pthread_mutex_unlock(&lock);
    return rv;
}

static CK_RV sim_SetPIN(CK_SESSION_HANDLE handle, CK_UTF8CHAR_PTR old_pin, CK_ULONG old_len, CK_UTF8CHAR_PTR new_pin,
                        CK_ULONG new_len) {
    pthread_mutex_lock(&lock);
    CK_SLOT_ID slot;
    CK_RV rv = check_session(handle, &slot);
    if (rv != CKR_OK) goto out;
    reader_state state;
    int fd = open_state(slot, 1, &state);
    if (fd < 0) {
        rv = CKR_DEVICE_ERROR;
        goto out;
    }
    int so = session_is_so(handle);
    unsigned long *left = so ? &state.so_left : &state.user_left;
    unsigned long max = so ? state.so_max : state.user_max;
    if (*left == 0) {
        rv = CKR_PIN_LOCKED;
    } else {
        rv = inner->C_SetPIN(handle, old_pin, old_len, new_pin, new_len);
        if (rv == CKR_PIN_INCORRECT) {
            (*left)--;
        } else if (rv == CKR_OK) {
            *left = max;
            if (so) state.so_default = pin_is(new_pin, new_len, FACTORY_SO_PIN);
            else state.user_default = pin_is(new_pin, new_len, FACTORY_USER_PIN);
        }
        if ((rv == CKR_PIN_INCORRECT || rv == CKR_OK) && write_state(fd, &state) != 0) rv = CKR_DEVICE_ERROR;
    }
    close_state(fd);
out:
    pthread_mutex_unlock(&lock);
    return rv;
}

/* --- key generation, slow on demand ---------------------------------------------------------------------- */

static CK_RV keygen_delay(CK_SESSION_HANDLE handle) {
    pthread_mutex_lock(&lock);
    CK_SLOT_ID slot;
    CK_RV rv = check_session(handle, &slot);
    reader_state state;
    unsigned long delay = 0;
    if (rv == CKR_OK && read_state(slot, &state) == 0) delay = state.keygen_delay_ms;
    pthread_mutex_unlock(&lock);
    if (rv != CKR_OK) return rv;
    const char *env = getenv("KAZTOKEN_SIM_KEYGEN_DELAY_MS");
    if (env && *env) delay = strtoul(env, NULL, 10);
    /* In steps, so a token pulled out during the wait fails the generation as a real one would. */
    while (delay > 0) {
        unsigned long step = delay < 100 ? delay : 100;
        struct timespec pause = {(time_t)(step / 1000), (long)(step % 1000) * 1000000L};
        nanosleep(&pause, NULL);
        delay -= step;
        pthread_mutex_lock(&lock);
        rv = check_session(handle, NULL);
        pthread_mutex_unlock(&lock);
        if (rv != CKR_OK) return rv;
    }
    return CKR_OK;
}

static CK_RV sim_GenerateKey(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR t, CK_ULONG n,
                             CK_OBJECT_HANDLE_PTR key) {
    CK_RV rv = keygen_delay(s);
    return rv == CKR_OK ? inner->C_GenerateKey(s, m, t, n, key) : rv;
}

static CK_RV sim_GenerateKeyPair(CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_ATTRIBUTE_PTR pt, CK_ULONG pn,
                                 CK_ATTRIBUTE_PTR kt, CK_ULONG kn, CK_OBJECT_HANDLE_PTR pub, CK_OBJECT_HANDLE_PTR priv) {
    CK_RV rv = keygen_delay(s);
    return rv == CKR_OK ? inner->C_GenerateKeyPair(s, m, pt, pn, kt, kn, pub, priv) : rv;
}

/* --- everything else: checked, then forwarded ------------------------------------------------------------ */

static CK_RV session_ok(CK_SESSION_HANDLE handle) {
    pthread_mutex_lock(&lock);
    CK_RV rv = check_session(handle, NULL);
    pthread_mutex_unlock(&lock);
    return rv;
}

#define FORWARD(name, params, args)                  \
    static CK_RV sim_##name params {                 \
        CK_RV rv = session_ok(s);                    \
        return rv == CKR_OK ? inner->C_##name args : rv; \
    }

FORWARD(GetSessionInfo, (CK_SESSION_HANDLE s, CK_SESSION_INFO_PTR i), (s, i))
FORWARD(GetOperationState, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))
FORWARD(SetOperationState, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d),
        (s, a, b, c, d))
FORWARD(Logout, (CK_SESSION_HANDLE s), (s))
FORWARD(CreateObject, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR o), (s, t, n, o))
FORWARD(CopyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n, CK_OBJECT_HANDLE_PTR p),
        (s, o, t, n, p))
FORWARD(DestroyObject, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o), (s, o))
FORWARD(GetObjectSize, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ULONG_PTR n), (s, o, n))
FORWARD(GetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, o, t, n))
FORWARD(SetAttributeValue, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, o, t, n))
FORWARD(FindObjectsInit, (CK_SESSION_HANDLE s, CK_ATTRIBUTE_PTR t, CK_ULONG n), (s, t, n))
FORWARD(FindObjects, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE_PTR o, CK_ULONG m, CK_ULONG_PTR n), (s, o, m, n))
FORWARD(FindObjectsFinal, (CK_SESSION_HANDLE s), (s))
FORWARD(EncryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
FORWARD(Encrypt, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))
FORWARD(EncryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))
FORWARD(EncryptFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))
FORWARD(DecryptInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
FORWARD(Decrypt, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))
FORWARD(DecryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))
FORWARD(DecryptFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))
FORWARD(DigestInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m), (s, m))
FORWARD(Digest, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))
FORWARD(DigestUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))
FORWARD(DigestKey, (CK_SESSION_HANDLE s, CK_OBJECT_HANDLE k), (s, k))
FORWARD(DigestFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))
FORWARD(SignInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
FORWARD(Sign, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))
FORWARD(SignUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))
FORWARD(SignFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG_PTR b), (s, a, b))
FORWARD(SignRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
FORWARD(SignRecover, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))
FORWARD(VerifyInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
FORWARD(Verify, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG d), (s, a, b, c, d))
FORWARD(VerifyUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))
FORWARD(VerifyFinal, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))
FORWARD(VerifyRecoverInit, (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE k), (s, m, k))
FORWARD(VerifyRecover, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d), (s, a, b, c, d))
FORWARD(DigestEncryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),
        (s, a, b, c, d))
FORWARD(DecryptDigestUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),
        (s, a, b, c, d))
FORWARD(SignEncryptUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),
        (s, a, b, c, d))
FORWARD(DecryptVerifyUpdate, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b, CK_BYTE_PTR c, CK_ULONG_PTR d),
        (s, a, b, c, d))
FORWARD(WrapKey,
        (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE w, CK_OBJECT_HANDLE k, CK_BYTE_PTR a, CK_ULONG_PTR b),
        (s, m, w, k, a, b))
FORWARD(UnwrapKey,
        (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE u, CK_BYTE_PTR a, CK_ULONG b, CK_ATTRIBUTE_PTR t,
         CK_ULONG n, CK_OBJECT_HANDLE_PTR k),
        (s, m, u, a, b, t, n, k))
FORWARD(DeriveKey,
        (CK_SESSION_HANDLE s, CK_MECHANISM_PTR m, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR t, CK_ULONG n,
         CK_OBJECT_HANDLE_PTR k),
        (s, m, b, t, n, k))
FORWARD(SeedRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))
FORWARD(GenerateRandom, (CK_SESSION_HANDLE s, CK_BYTE_PTR a, CK_ULONG b), (s, a, b))
FORWARD(GetFunctionStatus, (CK_SESSION_HANDLE s), (s))
FORWARD(CancelFunction, (CK_SESSION_HANDLE s), (s))

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list);

static CK_RV sim_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) { return C_GetFunctionList(list); }

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list) {
    if (!list) return CKR_ARGUMENTS_BAD;
    CK_FUNCTION_LIST *f = &function_list;
    f->version.major = 2;
    f->version.minor = 40;
#define SET(name) f->C_##name = sim_##name
    SET(Initialize); SET(Finalize); SET(GetInfo); SET(GetFunctionList); SET(GetSlotList); SET(GetSlotInfo);
    SET(GetTokenInfo); SET(GetMechanismList); SET(GetMechanismInfo); SET(InitToken); SET(InitPIN); SET(SetPIN);
    SET(OpenSession); SET(CloseSession); SET(CloseAllSessions); SET(GetSessionInfo); SET(GetOperationState);
    SET(SetOperationState); SET(Login); SET(Logout); SET(CreateObject); SET(CopyObject); SET(DestroyObject);
    SET(GetObjectSize); SET(GetAttributeValue); SET(SetAttributeValue); SET(FindObjectsInit); SET(FindObjects);
    SET(FindObjectsFinal); SET(EncryptInit); SET(Encrypt); SET(EncryptUpdate); SET(EncryptFinal); SET(DecryptInit);
    SET(Decrypt); SET(DecryptUpdate); SET(DecryptFinal); SET(DigestInit); SET(Digest); SET(DigestUpdate);
    SET(DigestKey); SET(DigestFinal); SET(SignInit); SET(Sign); SET(SignUpdate); SET(SignFinal); SET(SignRecoverInit);
    SET(SignRecover); SET(VerifyInit); SET(Verify); SET(VerifyUpdate); SET(VerifyFinal); SET(VerifyRecoverInit);
    SET(VerifyRecover); SET(DigestEncryptUpdate); SET(DecryptDigestUpdate); SET(SignEncryptUpdate);
    SET(DecryptVerifyUpdate); SET(GenerateKey); SET(GenerateKeyPair); SET(WrapKey); SET(UnwrapKey); SET(DeriveKey);
    SET(SeedRandom); SET(GenerateRandom); SET(GetFunctionStatus); SET(CancelFunction); SET(WaitForSlotEvent);
#undef SET
    *list = f;
    return CKR_OK;
}
