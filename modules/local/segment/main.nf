process SEGMENT {
    tag "${model.subdir ? model.label + ': ' : ''}${batch.items.size() == 1 ? "${batch.items[0].id}:${batch.items[0].substack + 1}/${batch.items[0].n}" : "${batch.name}: ${batch.items.size()} substacks"}"
    label 'gpu'
    conda "${projectDir}/envs/${model.family}.yml"

    input:
    // model: [index, label, subdir, family]; batch: [name, memory (bytes, planned), items: [[id, substack, n, job (index into jobs)]]]
    tuple val(model), val(batch), path(jobs, stageAs: 'jobs/?/*'), path(images, stageAs: 'images/?/*')
    val code          // digest of the Python files this step runs: a change reruns the task

    output:
    tuple val(model), val(batch), path('out/*'), emit: labels   // out/<k>: item k's substack labels, or its result when n == 1

    script:
    def args = task.ext.args ?: ''
    def staged_jobs = jobs instanceof List ? jobs : [jobs]
    def staged_images = images instanceof List ? images : [images]
    def rows = batch.items.withIndex().collect { item, k ->
        [staged_jobs[item.job], staged_images[item.job], item.substack, "out/${k}"].join('\t') }
    """
    rm -rf out && mkdir out     # a folder -resume reuses may hold a killed attempt's part
    cat > items.tsv <<'AIOD_ITEMS'
${rows.join('\n')}
AIOD_ITEMS
    export AIOD_FAMILY=${model.family}
    aiod segment --items items.tsv ${args}
    """

    stub:
    """
    mkdir out
    ${batch.items.withIndex().collect { item, k -> "mkdir out/${k}" }.join('\n    ')}
    """
}
