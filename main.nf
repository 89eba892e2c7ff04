#!/usr/bin/env nextflow
/*
 * AIoD: segment microscopy images far larger than one GPU, substack by substack, merge the
 * substacks into one seam-free instance mask, and keep every result in a shared cache keyed by
 * what made it. See README.md and docs/.
 */

include { RESOLVE_MODEL   } from './modules/local/resolve_model'
include { FETCH_ARTIFACTS } from './modules/local/fetch_artifacts'
include { CHECK_INPUT   } from './modules/local/check_input'
include { PLAN          } from './modules/local/plan'
include { SEGMENT       } from './modules/local/segment'
include { MERGE         } from './modules/local/merge'
include { FINALIZE      } from './modules/local/finalize'

// A digest of some files (names relative to `base`, and contents). Nextflow hashes the bin/
// scripts a task names, not the Python modules they import, so each process takes the digest
// of the sources its step runs (src/aiod/step_sources.json, kept current by a test): editing
// one of them reruns exactly those tasks on -resume. RESOLVE_MODEL also takes the registry's.
def filesDigest(File base, List<File> files) {
    def digest = java.security.MessageDigest.getInstance('SHA-256')
    files.sort { f -> f.path }.each { f ->
        digest.update(base.toPath().relativize(f.toPath()).toString().bytes)
        digest.update(f.bytes)
    }
    return digest.digest().encodeHex().toString().take(16)
}

// process name -> digest of the Python files that its step runs
def stepDigests(File pkg) {
    def steps = new groovy.json.JsonSlurperClassic().parse(new File(pkg, 'step_sources.json'))
    return steps.collectEntries { step, names -> [(step): filesDigest(pkg, names.collect { n -> new File(pkg, n) })] }
}

// every manifest of the built-in registry and of --registry_dir
def manifestFiles(List<File> dirs) {
    def found = []
    dirs.findAll { dir -> dir.isDirectory() }.each { dir ->
        dir.eachFileRecurse(groovy.io.FileType.FILES) { f -> if (f.name.endsWith('.yaml') || f.name.endsWith('.yml')) { found << f } }
    }
    return found
}

// `--help`: every parameter with its default and meaning, read from nextflow_schema.json.
def helpText(File schemaFile) {
    def schema = new groovy.json.JsonSlurperClassic().parse(schemaFile)
    def lines = ["Usage: nextflow run main.nf --input images.csv --model classical --outdir results [-profile ...] [-resume]", '']
    schema['$defs'].each { group_name, group ->
        lines << "${group.title}:"
        group.properties.each { name, spec ->
            if (spec.hidden) {
                return
            }
            def dflt = spec.containsKey('default') ? " [default: ${spec.default}]" : ''
            lines << String.format('  --%-16s %s%s', name, spec.description, dflt)
        }
        lines << ''
    }
    return lines.join('\n')
}

// Every parameter checked against nextflow_schema.json before any task starts: unknown names,
// types, whole numbers and enums. Returns the first problem as one line, or null.
def paramProblem(File schemaFile, Map given) {
    def specs = [:]
    new groovy.json.JsonSlurperClassic().parse(schemaFile)['$defs'].each { group_name, group -> specs.putAll(group.properties) }
    for (entry in given) {
        def name = entry.key
        def value = entry.value
        def spec = specs[name]
        if (spec == null) {
            def close = specs.keySet().min { known -> editDistance(known, name) }
            def hint = editDistance(close, name) <= 3 ? " (did you mean --${close}?)" : ''
            return "unknown parameter --${name}${hint}; see nextflow run main.nf --help"
        }
        if (value == null) {
            continue
        }
        if (spec.type == 'boolean' && !(value instanceof Boolean)) {
            return "--${name} '${value}': expected true or false"
        }
        if (spec.type == 'string' && (value instanceof Boolean)) {
            return "--${name}: expected a value (${spec.description})"
        }
        if (spec.type == 'integer' && !(value.toString() ==~ /\d+/ && (value as long) >= (spec.minimum ?: 0))) {
            return "--${name} '${value}': expected a whole number >= ${spec.minimum ?: 0} (${spec.description})"
        }
        if (spec.enum && !(value.toString() in spec.enum)) {
            return "--${name} '${value}': expected one of ${spec.enum.join(', ')}"
        }
    }
    return null
}

def editDistance(String a, String b) {
    def row = (0..b.length()).toList()
    a.eachWithIndex { ca, i ->
        def next = [i + 1]
        b.eachWithIndex { cb, j -> next << [row[j + 1] + 1, next[j] + 1, row[j] + (ca == cb ? 0 : 1)].min() }
        row = next
    }
    return row[b.length()]
}

workflow {
    def schemaFile = file("${projectDir}/nextflow_schema.json").toFile()
    if (params.help) {
        log.info(helpText(schemaFile))
        return
    }
    def problem = paramProblem(schemaFile, params)
    if (problem) {
        error("AIOD ERROR: ${problem}")
    }
    if (!params.input) {
        error("AIOD ERROR: --input is required: a CSV samplesheet with columns id,image[,axes,channel,ground_truth] (see docs/usage.md)")
    }
    code = stepDigests(file("${projectDir}/src/aiod").toFile())
    registry_dirs = [file("${projectDir}/model_registry").toFile()] + (params.registry_dir ? [file(params.registry_dir).toFile()] : [])
    registry = filesDigest(new File('/'), manifestFiles(registry_dirs))
    samplesheet = file(params.input)
    if (!samplesheet.exists()) {
        error("AIOD ERROR: --input ${params.input}: file not found")
    }
    overrides = params.model_params ? file(params.model_params) : []
    if (overrides && !overrides.exists()) {
        error("AIOD ERROR: --model_params ${params.model_params}: file not found")
    }

    // [model, version, task, overrides file or [], its path]: ['classical', 'nuclei', '', [], ''] ('' = the manifest's default)
    ch_model_request = channel.of([params.model, params.model_version ?: '', params.task ?: '', overrides, overrides ? overrides.toString() : ''])
    RESOLVE_MODEL(ch_model_request, registry, code.RESOLVE_MODEL)

    // model.json, its artifact fetched into the cache first when the version has one
    ch_resolved = RESOLVE_MODEL.out.model.branch { spec, n_locations ->
        fetch: (n_locations as int) > 0
        ready: true
    }
    FETCH_ARTIFACTS(ch_resolved.fetch.map { spec, n_locations -> spec }, code.FETCH_ARTIFACTS)
    ch_model = FETCH_ARTIFACTS.out.model.mix(ch_resolved.ready.map { spec, n_locations -> spec })

    // [samplesheet, its absolute path]: [images.csv, '/data/images.csv']
    CHECK_INPUT(channel.of([samplesheet, samplesheet.toAbsolutePath().toString()]), code.CHECK_INPUT)

    // [plan batch, [meta...], [image...]]: [0, [[id: 'field1', axes: 'YX', channel: '', image: '/data/field1.tif'], ...], [...]]
    // CHECK_INPUT numbers the PLAN task of each image (aiod.batches): many small images share one
    ch_plan_batches = CHECK_INPUT.out.samples
        .splitCsv(header: true)
        .map { row -> [row.plan_batch as int, [id: row.id, axes: row.axes, channel: row.channel, image: row.image], file(row.image)] }
        .groupTuple()
    PLAN(ch_plan_batches, ch_model.first(), code.PLAN)

    // [metas by id, job files by id, batches.json parsed]: what each PLAN task found and planned
    // (JsonSlurperClassic builds plain maps: JsonSlurper's lazy maps are built on first read, and
    // several operators read this one from their own threads)
    ch_planned = PLAN.out.plan.map { metas, jobs, batches ->
        [metas.collectEntries { m -> [(m.id): m] }, asList(jobs).collectEntries { j -> [(j.name.substring(0, j.name.length() - 5)): j] },
         new groovy.json.JsonSlurperClassic().parse(batches.toFile())]
    }

    // [batch, [job...], [image...]]: one SEGMENT task per batch of substacks, from one image or many
    ch_segment = ch_planned.flatMap { metas, jobs, batches ->
        batches.segment.collect { b ->
            def ids = b.items.collect { item -> item[0] }.unique()
            def items = b.items.collect { id, substack, n -> [id: id, substack: substack, n: n, job: ids.indexOf(id)] }
            [[name: b.name, memory: b.memory, items: items, jobs: ids.collect { id -> jobs[id].toString() }], ids.collect { id -> jobs[id] }, ids.collect { id -> file(metas[id].image) }]
        }
    }
    SEGMENT(ch_segment, code.SEGMENT)

    // [batch, [[item, its output]...]]: a substack's labels, or the result of an image planned as one substack
    ch_segmented = SEGMENT.out.labels.map { batch, outs -> [batch, asList(outs).sort { out -> out.name as int }.collect { out -> [batch.items[out.name as int], out] }] }

    // [meta, job, [substack labels]]: an image's merge starts as soon as its own substacks are done
    ch_to_merge = ch_segmented
        .flatMap { batch, outs -> outs.findAll { item, out -> item.n > 1 } }
        .map { item, labels -> [groupKey(item.id, item.n), labels] }
        .groupTuple()
        .map { key, labels -> [key.toString(), labels] }
        .join(ch_planned.flatMap { metas, jobs, batches ->
            batches.n_substacks.findAll { id, n -> n > 1 && !(id in batches.hits) }.collect { id, n -> [id, metas[id], jobs[id]] }
        })
        .map { id, labels, meta, job -> [meta, job, labels] }
    MERGE(ch_to_merge, code.MERGE)

    // [[id...], [job...], [result...] or []]: results go into the cache and out a batch at a time:
    // those one SEGMENT task made together, each merged one alone, one PLAN task's cache hits together
    ch_final = ch_segmented
        .map { batch, outs -> outs.findAll { item, out -> item.n == 1 }.collect { item, out -> [item.id, file(batch.jobs[item.job]), out] } }
        .filter { done -> done }
        .map { done -> done.transpose() }
        .mix(MERGE.out.result.map { meta, job, result -> [[meta.id], [job], [result]] })
        .mix(ch_planned.filter { metas, jobs, batches -> batches.hits }
            .map { metas, jobs, batches -> [batches.hits, batches.hits.collect { id -> jobs[id] }, []] })
    FINALIZE(ch_final, code.FINALIZE)

    FINALIZE.out.records
        .flatMap { ids, records -> asList(records).collect { record -> new groovy.json.JsonSlurperClassic().parse(record.toFile()) } }
        .toSortedList { a, b -> a.id <=> b.id }
        .subscribe { records -> if (records) { log.info(summaryText(records, params.outdir)) } }

    workflow.onComplete = {
        if (workflow.success) {
            log.info("AIoD: done in ${workflow.duration}; results in ${params.outdir}, cache in ${params.root_dir}/aiod_cache")
        }
    }
    workflow.onError = {
        def reasons = (workflow.errorReport ?: '').readLines().findAll { line -> line.contains('AIOD ERROR:') }*.trim().unique()
        def why = workflow.errorMessage ?: (workflow.errorReport ?: '').readLines().find { line -> line.trim() } ?: 'see .nextflow.log'
        log.error(reasons ? reasons.join('\n') : "AIoD stopped: ${why}")
    }
}

// A process output of one or several files, as a list.
def asList(files) {
    return files instanceof List ? files : [files]
}

// One line per image: where it came from (cache or computed), objects found, where it went.
def summaryText(List records, String outdir) {
    def lines = ['', 'AIoD summary', String.format('  %-20s %-9s %10s  %s', 'image', 'source', 'objects', 'result')]
    records.each { r ->
        lines << String.format('  %-20s %-9s %10s  %s', r.id, r.cache_hit ? 'cache' : 'computed', r.n_objects == null ? '-' : r.n_objects, "${outdir}/${r.id}.ome.zarr")
    }
    def computed = records.count { r -> !r.cache_hit }
    lines << "  ${records.size()} image(s): ${computed} computed, ${records.size() - computed} from the cache"
    return lines.join('\n')
}
