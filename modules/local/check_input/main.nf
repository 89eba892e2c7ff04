process CHECK_INPUT {
    tag "${samplesheet.name}"
    label 'cpu_small'

    input:
    tuple path(samplesheet), val(base_dir)  // base_dir: where relative image paths start
    val code                                // digest of the Python sources: a change reruns the task

    output:
    path 'samples.csv', emit: samples

    script:
    def args = task.ext.args ?: ''
    """
    aiod check-input --samplesheet ${samplesheet} --base-dir '${base_dir}' --out samples.csv ${args}
    """

    stub:
    """
    aiod check-input --samplesheet ${samplesheet} --base-dir '${base_dir}' --out samples.csv --no-open
    """
}
