# smarter_source: fetch this repository (the one the layer is in) at a pinned
# commit. The layer lives in the same repository as the sources it builds, so
# by default recipes fetch, with git over the file protocol, the commit that
# the layer's own checkout is at: pinning the layer pins the sources, no
# network is needed and no copy of any file is kept in the layer. To build
# from elsewhere (a mirror, a release tag), set both:
#   SMARTER_GIT_URI = "git://github.com/smarter-project/smarter.git;protocol=https;branch=main"
#   SMARTER_SRCREV = "<40-hex commit>"
# AUTOREV is refused: a build names its commit. Uncommitted changes in the
# checkout are not built (commit first).
SMARTER_GIT_URI ??= "git://${SMARTER_SRC_DIR};protocol=file;nobranch=1"
SMARTER_SRCREV ??= "${@smarter_checkout_rev(d)}"

SRC_URI += "${SMARTER_GIT_URI};name=smarter;destsuffix=smarter"
SRCREV_smarter = "${SMARTER_SRCREV}"
SRCREV_FORMAT = "smarter"
# The tree: S in the workspace recipe, a source of files in the others.
SMARTER_TREE = "${@d.getVar('UNPACKDIR') or d.getVar('WORKDIR')}/smarter"

def smarter_checkout_rev(d):
    """HEAD of the checkout the layer is in; '' when it is not a git checkout.

    The files git reads for HEAD are added to the recipe's parse dependencies,
    so a new commit re-parses this recipe (and only this one)."""
    import subprocess
    top = d.getVar('SMARTER_SRC_DIR')
    try:
        gitdir = subprocess.check_output(['git', '-C', top, 'rev-parse', '--absolute-git-dir'],
                                         stderr=subprocess.DEVNULL, text=True).strip()
        common = subprocess.check_output(['git', '-C', top, 'rev-parse', '--git-common-dir'],
                                         stderr=subprocess.DEVNULL, text=True).strip()
        rev = subprocess.check_output(['git', '-C', top, 'rev-parse', '--verify', 'HEAD^{commit}'],
                                      stderr=subprocess.DEVNULL, text=True).strip()
        ref = subprocess.check_output(['git', '-C', top, 'symbolic-ref', '-q', 'HEAD'],
                                      stderr=subprocess.DEVNULL, text=True).strip()
    except (OSError, subprocess.CalledProcessError):
        return ''
    common = os.path.join(top, common) if not os.path.isabs(common) else common
    deps = [os.path.join(gitdir, 'HEAD'), os.path.join(common, 'packed-refs')]
    if ref:
        deps.append(os.path.join(common, ref))
    for f in deps:
        if os.path.exists(f):
            bb.parse.mark_dependency(d, f)
    return rev

python __anonymous() {
    import re
    rev = d.getVar('SMARTER_SRCREV') or ''
    if not re.fullmatch(r'[0-9a-f]{40}', rev):
        raise bb.parse.SkipRecipe(
            "SMARTER_SRCREV must be a 40-hex git commit (got %r): the layer is not in a git "
            "checkout of the SMARTER repository, so set SMARTER_GIT_URI and SMARTER_SRCREV "
            "(see meta-smarter/README.md)" % rev)
}
