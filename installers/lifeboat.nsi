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
; The appliance runs as a Windows service (section "Appliance service", selected by default): the installer makes
; %ProgramData%\Lifeboat readable by SYSTEM and Administrators only, then runs
;   lifeboat.exe appliance install-service --home %ProgramData%\Lifeboat\appliance --init
; (the service, LocalSystem, automatic start, restarted on failure, initialises that home at its first start, so the
; vault key is in the Credential Manager of the account that runs the appliance). The uninstaller runs
;   lifeboat.exe appliance uninstall-service --home %ProgramData%\Lifeboat\appliance
; (stops it: the appliance drains its in-flight work, then the service is removed), and an upgrade stops and
; removes the old service before replacing the files and installs it again after.
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
; The service's appliance home ($APPDATA is %ProgramData% once SetShellVarContext all is in force).
!define DATA_DIR "$APPDATA\${PRODUCT}"
!define APPLIANCE_HOME "${DATA_DIR}\appliance"
; SYSTEM (the service) and Administrators (the console, elevated) only, by SID (names are localised); no ACE
; inherited from %ProgramData%, where every user may read.
!define DATA_ACL '/inheritance:r /grant:r *S-1-5-18:(OI)(CI)F /grant:r *S-1-5-32-544:(OI)(CI)F'

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
!insertmacro MUI_PAGE_COMPONENTS
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
  Call ServiceOption
FunctionEnd

Function un.onInit
  SetRegView 64
FunctionEnd

Section "${PRODUCT}" SecMain
  SectionIn RO
  SetShellVarContext all
  ; Upgrading in place: the running service holds the old files open. Stop (it drains) and remove it with the old
  ; program; "Appliance service" below installs it again. Its home and vault key stay.
  ${If} ${FileExists} "$INSTDIR\${CLI_EXE}"
    DetailPrint "Stopping the appliance service of the previous version"
    nsExec::ExecToLog '"$INSTDIR\${CLI_EXE}" appliance uninstall-service --home "${APPLIANCE_HOME}"'
    Pop $0
  ${EndIf}
  SetOutPath "$INSTDIR"
  ; Upgrading in place: drop the previous runtime first, so no stale module or DLL of an older build survives.
  RMDir /r "$INSTDIR\_internal"
  File /r "${DIST_DIR}/*.*"
  WriteUninstaller "$INSTDIR\${UNINSTALLER}"

  ; the shortcut is for every user of the machine (SetShellVarContext all, above)
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

Section "Appliance service" SecService
  ; The appliance runs as a service: replication goes on whoever is logged on; consoles attach to it.
  SetShellVarContext all
  CreateDirectory "${DATA_DIR}"
  nsExec::ExecToLog '"$SYSDIR\icacls.exe" "${DATA_DIR}" ${DATA_ACL}'
  Pop $0
  ${If} $0 != 0
    MessageBox MB_ICONSTOP|MB_OK "Could not restrict ${DATA_DIR} to SYSTEM and Administrators (icacls: $0). \
      The appliance service was not installed." /SD IDOK
    Abort
  ${EndIf}
  DetailPrint "Installing the appliance service (home ${APPLIANCE_HOME})"
  nsExec::ExecToLog '"$INSTDIR\${CLI_EXE}" appliance install-service --home "${APPLIANCE_HOME}" --init'
  Pop $0
  ${If} $0 != 0
    ; The program is installed; only the service is missing. Say how to add it, do not undo the install.
    MessageBox MB_ICONEXCLAMATION|MB_OK "The appliance service could not be installed (exit code $0; details in \
      the installer's log). Install it later from an administrator prompt:$\r$\n$\r$\n\
      $\"$INSTDIR\${CLI_EXE}$\" appliance install-service --home $\"${APPLIANCE_HOME}$\" --init" /SD IDOK
  ${EndIf}
SectionEnd

; `setup.exe /S /NOSERVICE`: a silent install without the appliance service (a computer that only runs a console).
Function ServiceOption
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/NOSERVICE" $R1
  ${IfNot} ${Errors}
    SectionSetFlags ${SecService} 0
  ${EndIf}
FunctionEnd

LangString DESC_SecMain ${LANG_ENGLISH} "The Lifeboat console and command line."
LangString DESC_SecService ${LANG_ENGLISH} "Run the appliance on this computer as a Windows service (home in \
  ProgramData\${PRODUCT}, readable by SYSTEM and Administrators only). Leave it out on a computer that only runs \
  a console."
!insertmacro MUI_FUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SecMain} $(DESC_SecMain)
  !insertmacro MUI_DESCRIPTION_TEXT ${SecService} $(DESC_SecService)
!insertmacro MUI_FUNCTION_DESCRIPTION_END

Section "Uninstall"
  SetShellVarContext all
  ; First the service (it runs lifeboat.exe: its files are in use until it stops). It drains, stops and is removed;
  ; its home under ProgramData and the vault key stay. Nothing to do (exit 0) when it was never installed.
  ${If} ${FileExists} "$INSTDIR\${CLI_EXE}"
    DetailPrint "Stopping and removing the appliance service"
    nsExec::ExecToLog '"$INSTDIR\${CLI_EXE}" appliance uninstall-service --home "${APPLIANCE_HOME}"'
    Pop $0
    ${If} $0 != 0
      MessageBox MB_ICONEXCLAMATION|MB_OK "The appliance service could not be removed (exit code $0). Remove it \
        with: sc.exe delete (its name starts with LifeboatAppliance-)." /SD IDOK
    ${EndIf}
  ${EndIf}
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
