/* A PKCS#11 library that misbehaves on demand, for the isolation tests. HOSTILE_MODE (read at every call, so
 * one build serves every test) picks the misbehaviour:
 *   ok               one initialised token, no objects
 *   hang-initialize  C_Initialize never returns;   hang-slotlist, hang-tokeninfo: the same in those calls
 *   segv-tokeninfo   C_GetTokenInfo dereferences NULL;  abort-slotlist: abort() in C_GetSlotList
 *   null-list        C_GetFunctionList answers CKR_OK and leaves the list NULL
 *   fail-initialize  C_Initialize answers CKR_GENERAL_ERROR
 *   noisy            writes terminal escapes to stderr and stdout in every call, otherwise "ok"
 * Built by the tests with gcc; never installed or registered anywhere. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef unsigned long CK_ULONG;
typedef CK_ULONG CK_RV;
typedef struct { unsigned char major, minor; } CK_VERSION;
typedef struct {
  CK_VERSION cryptokiVersion; unsigned char manufacturerID[32]; CK_ULONG flags;
  unsigned char libraryDescription[32]; CK_VERSION libraryVersion;
} CK_INFO;
typedef struct {
  unsigned char slotDescription[64]; unsigned char manufacturerID[32]; CK_ULONG flags;
  CK_VERSION hardwareVersion, firmwareVersion;
} CK_SLOT_INFO;
typedef struct {
  unsigned char label[32], manufacturerID[32], model[16], serialNumber[16]; CK_ULONG flags;
  CK_ULONG ulMaxSessionCount, ulSessionCount, ulMaxRwSessionCount, ulRwSessionCount, ulMaxPinLen, ulMinPinLen,
      ulTotalPublicMemory, ulFreePublicMemory, ulTotalPrivateMemory, ulFreePrivateMemory;
  CK_VERSION hardwareVersion, firmwareVersion; unsigned char utcTime[16];
} CK_TOKEN_INFO;

#define NFUNCS 68
typedef struct { CK_VERSION version; void *f[NFUNCS]; } CK_FUNCTION_LIST;

static int mode(const char *m) { const char *v = getenv("HOSTILE_MODE"); return v && strcmp(v, m) == 0; }
static void noise(void) {
  if (mode("noisy")) {
    fputs("\x1b]0;pwned\x07\x1b[2J TCTI error from the library\n", stderr);
    fputs("\x1b[31mstdout noise\n", stdout);
    fflush(stdout);
  }
}
static void hang(void) { for (;;) pause(); }
static void pad(unsigned char *dst, size_t n, const char *src) { memset(dst, ' ', n); memcpy(dst, src, strlen(src)); }

static CK_RV not_supported(void) { return 0x54; }
static CK_RV C_Initialize(void *args) {
  (void)args; noise();
  if (mode("hang-initialize")) hang();
  if (mode("fail-initialize")) return 0x5;
  return 0;
}
static CK_RV C_Finalize(void *r) { (void)r; return 0; }
static CK_RV C_GetInfo(CK_INFO *info) {
  noise(); memset(info, 0, sizeof *info);
  info->cryptokiVersion.major = 2; info->cryptokiVersion.minor = 40;
  pad(info->manufacturerID, 32, "Hostile Test Stub"); pad(info->libraryDescription, 32, "hostile stub");
  return 0;
}
static CK_RV C_GetSlotList(unsigned char present, CK_ULONG *list, CK_ULONG *count) {
  (void)present; noise();
  if (mode("hang-slotlist")) hang();
  if (mode("abort-slotlist")) abort();
  if (list) { if (*count < 1) { *count = 1; return 0x150; } list[0] = 7; }
  *count = 1;
  return 0;
}
static CK_RV C_GetSlotInfo(CK_ULONG slot, CK_SLOT_INFO *info) {
  noise(); if (slot != 7) return 0x3;
  memset(info, 0, sizeof *info); pad(info->slotDescription, 64, "Hostile reader"); pad(info->manufacturerID, 32, "Hostile");
  info->flags = 0x1 | 0x2 | 0x4; /* token present, removable, hardware */
  return 0;
}
static CK_RV C_GetTokenInfo(CK_ULONG slot, CK_TOKEN_INFO *info) {
  noise(); if (slot != 7) return 0x3;
  if (mode("hang-tokeninfo")) hang();
  if (mode("segv-tokeninfo")) { volatile int *p = NULL; *p = 1; }
  memset(info, 0, sizeof *info);
  pad(info->label, 32, "hostile"); pad(info->manufacturerID, 32, "Hostile"); pad(info->model, 16, "Stub");
  pad(info->serialNumber, 16, "H0571L3");
  info->flags = 0x400 | 0x8 | 0x4; /* initialised, user PIN initialised, login required */
  info->ulMaxPinLen = 32; info->ulMinPinLen = 4;
  return 0;
}
static CK_RV C_OpenSession(CK_ULONG slot, CK_ULONG flags, void *app, void *notify, CK_ULONG *session) {
  (void)flags; (void)app; (void)notify; if (slot != 7) return 0x3; *session = 1; return 0;
}
static CK_RV C_CloseSession(CK_ULONG s) { (void)s; return 0; }
static CK_RV C_FindObjectsInit(CK_ULONG s, void *t, CK_ULONG n) { (void)s; (void)t; (void)n; return 0; }
static CK_RV C_FindObjects(CK_ULONG s, CK_ULONG *objs, CK_ULONG max, CK_ULONG *count) {
  (void)s; (void)objs; (void)max; *count = 0; return 0;
}
static CK_RV C_FindObjectsFinal(CK_ULONG s) { (void)s; return 0; }

static CK_FUNCTION_LIST list;
CK_RV C_GetFunctionList(CK_FUNCTION_LIST **out) {
  if (mode("null-list")) { *out = NULL; return 0; }
  list.version.major = 2; list.version.minor = 40;
  for (int i = 0; i < NFUNCS; i++) list.f[i] = (void *)not_supported;
  /* indexes in CK_FUNCTION_LIST after `version` (PKCS#11 v2.40) */
  list.f[0] = (void *)C_Initialize; list.f[1] = (void *)C_Finalize; list.f[2] = (void *)C_GetInfo;
  list.f[3] = (void *)C_GetFunctionList; list.f[4] = (void *)C_GetSlotList; list.f[5] = (void *)C_GetSlotInfo;
  list.f[6] = (void *)C_GetTokenInfo; list.f[12] = (void *)C_OpenSession; list.f[13] = (void *)C_CloseSession;
  list.f[26] = (void *)C_FindObjectsInit; list.f[27] = (void *)C_FindObjects; list.f[28] = (void *)C_FindObjectsFinal;
  *out = &list;
  return 0;
}
