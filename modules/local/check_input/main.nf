process CHECK_INPUT {
    tag "${samplesheet.name}"
    label 'cpu_small'
    conda "${projectDir}/envs/classical.yml"

    input:
    tuple path(samplesheet), val(source)    // source: the samplesheet's own absolute path, for messages and relative paths
    val subdirs                             // where each model publishes under --outdir ('': --outdir itself)
    val code                                // digest of the Python files this step runs: a change reruns the task

    output:
    path 'samples.csv', emit: samples

    script:
    def args = task.ext.args ?: ''
    """
    aiod check-input --samplesheet ${samplesheet} --source '${source}' --out samples.csv --subdirs '${subdirs.join(',')}' ${args}
    """

    stub:
    """
    aiod check-input --samplesheet ${samplesheet} --source '${source}' --out samples.csv --no-open
    """
}
