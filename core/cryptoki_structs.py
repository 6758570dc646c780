"""The C side of Cryptoki that core.cryptoki calls through ctypes: the structures of pkcs11.h (v2.40) and the
Rutoken family's extended token info (rtpkcs11t.h, which KAZTOKEN inherits), laid out as the C headers have them."""

from __future__ import annotations

import ctypes

CK_ULONG = ctypes.c_ulong

# Order of CK_FUNCTION_LIST (PKCS#11 v2.40 §5.1): the index of each entry point after `version`.
_FUNCTIONS = [
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
]


class CK_VERSION(ctypes.Structure):
    _fields_ = (("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte))


class CK_TOKEN_INFO(ctypes.Structure):
    _fields_ = (
        ("label", ctypes.c_char * 32),
        ("manufacturerID", ctypes.c_char * 32),
        ("model", ctypes.c_char * 16),
        ("serialNumber", ctypes.c_char * 16),
        ("flags", CK_ULONG),
        ("ulMaxSessionCount", CK_ULONG),
        ("ulSessionCount", CK_ULONG),
        ("ulMaxRwSessionCount", CK_ULONG),
        ("ulRwSessionCount", CK_ULONG),
        ("ulMaxPinLen", CK_ULONG),
        ("ulMinPinLen", CK_ULONG),
        ("ulTotalPublicMemory", CK_ULONG),
        ("ulFreePublicMemory", CK_ULONG),
        ("ulTotalPrivateMemory", CK_ULONG),
        ("ulFreePrivateMemory", CK_ULONG),
        ("hardwareVersion", CK_VERSION),
        ("firmwareVersion", CK_VERSION),
        ("utcTime", ctypes.c_char * 16),
    )


class CK_INFO(ctypes.Structure):
    _fields_ = (
        ("cryptokiVersion", CK_VERSION),
        ("manufacturerID", ctypes.c_char * 32),
        ("flags", CK_ULONG),
        ("libraryDescription", ctypes.c_char * 32),
        ("libraryVersion", CK_VERSION),
    )


class CK_SLOT_INFO(ctypes.Structure):
    _fields_ = (
        ("slotDescription", ctypes.c_char * 64),
        ("manufacturerID", ctypes.c_char * 32),
        ("flags", CK_ULONG),
        ("hardwareVersion", CK_VERSION),
        ("firmwareVersion", CK_VERSION),
    )


class CK_ATTRIBUTE(ctypes.Structure):
    _fields_ = (("type", CK_ULONG), ("pValue", ctypes.c_void_p), ("ulValueLen", CK_ULONG))


class CK_C_INITIALIZE_ARGS(ctypes.Structure):
    _fields_ = (
        ("CreateMutex", ctypes.c_void_p),
        ("DestroyMutex", ctypes.c_void_p),
        ("LockMutex", ctypes.c_void_p),
        ("UnlockMutex", ctypes.c_void_p),
        ("flags", CK_ULONG),
        ("pReserved", ctypes.c_void_p),
    )


class CK_FUNCTION_LIST(ctypes.Structure):
    _fields_ = (("version", CK_VERSION), *((name, ctypes.c_void_p) for name in _FUNCTIONS))


# Rutoken-family extended token info (rtpkcs11t.h). The caller states the structure size; older libraries
# know a shorter structure, so the call is retried with the size that ends at ulTokenClass.
class CK_TOKEN_INFO_EXTENDED(ctypes.Structure):
    _fields_ = (
        ("ulSizeofThisStructure", CK_ULONG),
        ("ulTokenType", CK_ULONG),
        ("ulProtocolNumber", CK_ULONG),
        ("ulMicrocodeNumber", CK_ULONG),
        ("ulOrderNumber", CK_ULONG),
        ("flags", CK_ULONG),
        ("ulMaxAdminPinLen", CK_ULONG),
        ("ulMinAdminPinLen", CK_ULONG),
        ("ulMaxUserPinLen", CK_ULONG),
        ("ulMinUserPinLen", CK_ULONG),
        ("ulMaxAdminRetryCount", CK_ULONG),
        ("ulAdminRetryCountLeft", CK_ULONG),
        ("ulMaxUserRetryCount", CK_ULONG),
        ("ulUserRetryCountLeft", CK_ULONG),
        ("serialNumber", ctypes.c_ubyte * 8),
        ("ulTotalMemory", CK_ULONG),
        ("ulFreeMemory", CK_ULONG),
        ("ATR", ctypes.c_ubyte * 64),
        ("ulATRLen", CK_ULONG),
        ("ulTokenClass", CK_ULONG),
        ("ulBatteryVoltage", CK_ULONG),
        ("ulBodyColor", CK_ULONG),
        ("ulFirmwareChecksum", CK_ULONG),
        ("ulBatteryPercentage", CK_ULONG),
        ("ulBatteryFlags", CK_ULONG),
    )
