; Lifeboat: Windows installer (NSIS 3) over the PyInstaller one-folder build (installers/lifeboat.spec).
;
;   makensis installers\lifeboat.nsi                      after `pyinstaller installers\lifeboat.spec` on Windows
;
; Optional defines (/DNAME=value), all with defaults, for scripts/build_installer.sh and CI:
;   VERSION           product version; default: read from pyproject.toml's [project] table at compile time
;   VERSION_NUMERIC   four numbers for the Windows version resource; default: VERSION.0 (fine for x.y.z)
;   DIST_DIR          the PyInstaller folder; default: ..\dist\lifeboat
;   ICON              installer icon; default: ..\build\lifeboat\lifeboat.ico (rendered by the spec from app.svg)
;   OUT_FILE          default: ..\dist\lifeboat-VERSION-setup.exe
;   COMPRESSOR        lzma (default, smallest) or zlib (about 3x faster to compile, for validation)
;   TARGET            makensis target: amd64-unicode (default) or x86-unicode; both install the 64-bit program
;   ALLOW_NON_WINDOWS_PAYLOAD   defined: a non-Windows DIST_DIR is expected (no warning; for makensis -WX)
;
; The payload must be a Windows build: PyInstaller cannot cross-build. Compiled against a Linux build (as
; scripts/build_installer.sh does, to validate this script), makensis warns and the output's name says so.
;
; The uninstaller removes the program only. Appliance homes (vault, state, certificates) and the vault key in
; Credential Manager stay: uninstalling or upgrading must never destroy recovery data.

!ifndef TARGET
  ; A 64-bit installer for a 64-bit program: native Program Files and registry view, and it runs under wine64
  ; (scripts/build_installer.sh installs and uninstalls it there). x86-unicode also works (see .onInit).
  !define TARGET amd64-unicode
!endif
Target ${TARGET}
Unicode true
ManifestDPIAware true

!ifndef COMPRESSOR
  !define COMPRESSOR lzma
!endif
SetCompressor /SOLID ${COMPRESSOR}

!ifndef VERSION
  ; The first `version = "..."` line of pyproject.toml is the [project] table's (the file's layout keeps it first).
  !searchparse /file "../pyproject.toml" `version = "` VERSION `"`
!endif
!ifndef VERSION
  !error "no version: pass /DVERSION=x.y.z or keep `version = ...` in pyproject.toml's [project] table"
!endif
!ifndef VERSION_NUMERIC
  !define VERSION_NUMERIC "${VERSION}.0"
!endif
!ifndef DIST_DIR
  !define DIST_DIR "../dist/lifeboat"
!endif
!ifndef ICON
  !define ICON "../build/lifeboat/lifeboat.ico"
!endif

!if /FileExists "${DIST_DIR}/_internal/*.*"
!else
  !error "${DIST_DIR} is not a PyInstaller build: run `pyinstaller installers\lifeboat.spec` first"
!endif
!if /FileExists "${DIST_DIR}/lifeboat-console.exe"
  !define PAYLOAD_SUFFIX ""
!else
  !define PAYLOAD_SUFFIX "-NOT-A-WINDOWS-PAYLOAD"
  !ifdef ALLOW_NON_WINDOWS_PAYLOAD  ; validation on Linux (scripts/build_installer.sh): said, not warned, so -WX holds
    !echo "${DIST_DIR} is not a Windows build: this installer validates the script only"
  !else
    !warning "${DIST_DIR} holds no lifeboat-console.exe (not a Windows build): this installer validates the script only"
  !endif
!endif
!ifndef OUT_FILE
  !define OUT_FILE "../dist/lifeboat-${VERSION}-setup${PAYLOAD_SUFFIX}.exe"
!endif

!define PRODUCT "Lifeboat"
!define PUBLISHER "Lifeboat"
!define CONSOLE_EXE "lifeboat-console.exe"
!define CLI_EXE "lifeboat.exe"
!define UNINSTALLER "uninstall.exe"
!define REG_KEY "Software\Lifeboat"
!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\Lifeboat"

!include "MUI2.nsh"
!include "x64.nsh"
!include "LogicLib.nsh"
!include "FileFunc.nsh"

Name "${PRODUCT} ${VERSION}"
OutFile "${OUT_FILE}"
InstallDir "$PROGRAMFILES64\${PRODUCT}"
InstallDirRegKey HKLM "${REG_KEY}" "InstallDir"  ; an upgrade goes where the last version went
RequestExecutionLevel admin                      ; Program Files and HKLM
BrandingText "${PRODUCT} ${VERSION}"

VIProductVersion "${VERSION_NUMERIC}"
VIAddVersionKey "ProductName" "${PRODUCT}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "FileDescription" "${PRODUCT} ${VERSION} setup"
VIAddVersionKey "CompanyName" "${PUBLISHER}"
VIAddVersionKey "LegalCopyright" "${PUBLISHER}"

!define MUI_ABORTWARNING
!if /FileExists "${ICON}"
  !define MUI_ICON "${ICON}"
  !define MUI_UNICON "${ICON}"
!else
  !warning "no ${ICON}: the installer gets NSIS's default icon"
!endif
; No "run Lifeboat now" on the finish page: it would start the console elevated, as the installing administrator.
!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Function .onInit
  ${IfNot} ${RunningX64}  ; only reachable with TARGET=x86-unicode: a 64-bit installer does not start on 32-bit
    MessageBox MB_ICONSTOP|MB_OK "${PRODUCT} needs 64-bit Windows."
    Abort
  ${EndIf}
  SetRegView 64  ; a 64-bit program: its keys belong in the 64-bit registry view, not WOW6432Node
FunctionEnd

Function un.onInit
  SetRegView 64
FunctionEnd

Section "${PRODUCT}" SecMain
  SectionIn RO
  SetOutPath "$INSTDIR"
  ; Upgrading in place: drop the previous runtime first, so no stale module or DLL of an older build survives.
  RMDir /r "$INSTDIR\_internal"
  File /r "${DIST_DIR}/*.*"
  WriteUninstaller "$INSTDIR\${UNINSTALLER}"

  SetShellVarContext all  ; the shortcut is for every user of the machine
  CreateShortcut "$SMPROGRAMS\${PRODUCT}.lnk" "$INSTDIR\${CONSOLE_EXE}" "" "$INSTDIR\${CONSOLE_EXE}" 0 \
    SW_SHOWNORMAL "" "${PRODUCT} console: disaster recovery of your protected machines"

  WriteRegStr HKLM "${REG_KEY}" "InstallDir" "$INSTDIR"
  WriteRegStr HKLM "${REG_KEY}" "Version" "${VERSION}"

  ; Apps & features (Add/Remove Programs)
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayName" "${PRODUCT}"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINST_KEY}" "Publisher" "${PUBLISHER}"
  WriteRegStr HKLM "${UNINST_KEY}" "DisplayIcon" "$INSTDIR\${CONSOLE_EXE},0"
  WriteRegStr HKLM "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKLM "${UNINST_KEY}" "UninstallString" '"$INSTDIR\${UNINSTALLER}"'
  WriteRegStr HKLM "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\${UNINSTALLER}" /S'
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINST_KEY}" "NoRepair" 1
  ${GetSize} "$INSTDIR" "/S=0K" $0 $1 $2
  IntFmt $0 "0x%08X" $0
  WriteRegDWORD HKLM "${UNINST_KEY}" "EstimatedSize" "$0"  ; in KiB
SectionEnd

Section "Uninstall"
  SetShellVarContext all
  Delete "$SMPROGRAMS\${PRODUCT}.lnk"
  ; Only what the installer put there: _internal is entirely ours; the folder itself goes only if it is empty, so
  ; an install directory chosen badly (or files a user kept in it) is never wiped.
  RMDir /r "$INSTDIR\_internal"
  Delete "$INSTDIR\${CONSOLE_EXE}"
  Delete "$INSTDIR\${CLI_EXE}"
  Delete "$INSTDIR\${UNINSTALLER}"
  RMDir "$INSTDIR"
  DeleteRegKey HKLM "${UNINST_KEY}"
  DeleteRegKey HKLM "${REG_KEY}"
SectionEnd
